"""Reading a topic to its end as it was when reading began, without joining a group."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from voicenote.errors import DependencyUnavailable
from voicenote.kafka.clients import consumer as new_consumer
from voicenote.settings import KafkaSettings

OFFSET_BEGINNING = -2
_OFFSET_LATEST = -1  # offsets_for_times: these "timestamps" ask for a partition's start (-2) or end (-1)


def list_offsets(consumer: Consumer, partitions: Collection[tuple[str, int]], which: Literal["earliest", "latest"],
                 timeout: float) -> dict[tuple[str, int], int]:
    """The first (``earliest``) or next-to-be-written (``latest``) offset of each partition, asked for all of them
    in one ListOffsets request per broker; ``get_watermark_offsets`` sends two per partition, which made the
    progress and lag readers of an idle stack the broker's biggest callers (issue 24). Raises KafkaException."""
    if not partitions:
        return {}
    spec = OFFSET_BEGINNING if which == "earliest" else _OFFSET_LATEST
    answered = consumer.offsets_for_times([TopicPartition(t, p, spec) for t, p in sorted(partitions)], timeout=timeout)
    found = {}
    for tp in answered:
        if tp.error is not None:
            raise KafkaException(tp.error)
        found[(tp.topic, tp.partition)] = tp.offset
    return found


def read_to_end(settings: KafkaSettings, topic: str, *, starts: Mapping[int, int] | None = None,
                stops: Mapping[int, int] | None = None, timeout: float = 300.0,
                group_prefix: str = "voicenote-read", missing_ok: bool = False) -> Iterator[Message]:
    """Every record of ``topic`` from ``starts`` (per partition; default every partition from its beginning)
    up to the partition's end as it was when reading began, without joining a group (blocking).

    The end of each partition is fixed at the start: the larger of its high watermark (ListOffsets) and the
    high watermark of the first fetch answer for it. Both are the same on Kafka; Tansu answers ListOffsets
    with the number of record batches, not records, so there the fetch answer's is the one that counts
    (docs/architecture.md). Records written after that are not read, and a partition also ends at its
    ``stops`` offset (exclusive) or at partition EOF. Reading waits for every partition's end however
    long the broker takes to answer, up to ``timeout`` seconds in all: past it, DependencyUnavailable
    (never a silent partial read). A topic that does not exist is an error, or reads as empty with ``missing_ok``.
    """
    consumer = new_consumer(settings, f"{group_prefix}-{time.time_ns()}",
                            {"enable.auto.commit": False, "enable.partition.eof": True})
    deadline = time.monotonic() + timeout
    try:
        meta = consumer.list_topics(topic, timeout=10.0).topics.get(topic)
        if meta is None or meta.error is not None:
            if missing_ok:
                return
            raise DependencyUnavailable("kafka", f"topic {topic} does not exist (create it with `voicenote topics create`)")
        wanted = sorted(starts) if starts is not None else sorted(meta.partitions)
        ends: dict[int, int] = {}  # partition -> the end taken at the start (exclusive)
        assignment = []
        for partition in wanted:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10.0, cached=False)
            start = starts[partition] if starts is not None else OFFSET_BEGINNING
            stop = (stops or {}).get(partition)
            if high <= low or (stop is not None and 0 <= stop <= max(start, low)):
                continue  # empty (no batch either, so on Tansu too), or nothing between start and stop
            ends[partition] = min(high, stop) if stop is not None else high
            assignment.append(TopicPartition(topic, partition, start))
        listed = dict(ends)
        seen_fetch: set[int] = set()
        open_partitions = set(ends)
        if assignment:
            consumer.assign(assignment)
        while open_partitions:
            if time.monotonic() > deadline:
                raise DependencyUnavailable(
                    "kafka", f"reading {topic}: {len(open_partitions)} of {len(wanted)} partitions not read to their end "
                             f"within {timeout:g}s (partitions {sorted(open_partitions)[:8]}); nothing partial is reported")
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            partition = msg.partition()
            if partition is None or partition not in open_partitions:
                continue
            if partition not in seen_fetch:  # the first fetch answer for it: its high watermark, by record count
                seen_fetch.add(partition)
                _low, fetched_high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                stop = (stops or {}).get(partition)
                ends[partition] = max(listed[partition], fetched_high if fetched_high >= 0 else 0)
                if stop is not None:
                    ends[partition] = min(ends[partition], stop)
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(partition)
                    continue
                raise DependencyUnavailable("kafka", f"reading {topic}[{partition}]: {error}")
            offset = msg.offset() or 0
            if offset >= ends[partition]:
                open_partitions.discard(partition)  # written after reading began, or past ``stops``
                continue
            yield msg
            if offset + 1 >= ends[partition]:
                open_partitions.discard(partition)
    except KafkaException as exc:
        raise DependencyUnavailable("kafka", f"reading {topic}: {exc}") from exc
    finally:
        consumer.close()


def committed_offsets(settings: KafkaSettings, group: str, topic: str, partitions: Sequence[int], *,
                      timeout: float = 30.0) -> dict[int, int]:
    """``group``'s committed offset on each of ``topic``'s ``partitions`` (-1 where none), read with a consumer of that
    group id that never joins it (blocking). A partition whose answer carries an error is left out."""
    consumer = new_consumer(settings, group, {"enable.auto.commit": False})
    try:
        answered = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        return {tp.partition: tp.offset for tp in answered if tp.error is None}
    except KafkaException as exc:
        raise DependencyUnavailable("kafka", f"reading {group}'s committed offsets on {topic}: {exc}") from exc
    finally:
        consumer.close()
