"""Replaying a topic range and redriving dead letters.

Replay reads request events in a time or offset range (optionally filtered) and publishes them again
as new jobs: the old job ids already reached a terminal state, which the workers never redo, so each
replayed request gets a fresh job id and keeps the old one in ``attributes["replay_of"]``.
Redrive publishes dead letters' original bytes back to their source topic once the cause is fixed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from schemas.codec import AvroCodec
from schemas.errors import DecodeError
from voicenote.errors import DependencyUnavailable, PublishError
from voicenote.settings import KafkaSettings


@dataclass(frozen=True)
class Range:
    """Where to read: a time range (epoch ms) or an offset range, per partition or all of them."""

    start_ms: int | None = None
    end_ms: int | None = None
    start_offset: int | None = None
    end_offset: int | None = None  # exclusive
    partitions: tuple[int, ...] | None = None


@dataclass
class ReplayReport:
    read: int = 0
    matched: int = 0
    published: int = 0
    undecodable: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def read_range(settings: KafkaSettings, topic: str, rng: Range, *, idle_timeout: float = 2.0) -> Iterator[Any]:
    """Every message of ``topic`` inside ``rng``, partition by partition, without joining a group."""
    consumer = Consumer({**settings.client_config(), "group.id": f"voicenote-replay-{time.time_ns()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise DependencyUnavailable("kafka", f"topic {topic} does not exist")
        parts = sorted(rng.partitions or meta.partitions.keys())
        for partition in parts:
            # The end is found by partition EOF, not the high watermark: Tansu's ListOffsets reports the
            # batch count rather than the record count for batched produces.
            low, _high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            start = max(low, rng.start_offset) if rng.start_offset is not None else low
            if rng.start_ms is not None:
                found = consumer.offsets_for_times([TopicPartition(topic, partition, rng.start_ms)], timeout=10)[0]
                if found.offset < 0:
                    continue  # nothing at or after start_ms in this partition
                start = max(start, found.offset)
            stop = rng.end_offset
            if stop is not None and start >= stop:
                continue
            consumer.assign([TopicPartition(topic, partition, start)])
            deadline = time.monotonic() + idle_timeout
            while time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                if msg.error() is not None:
                    if msg.error().code() == -191:  # _PARTITION_EOF
                        break
                    raise DependencyUnavailable("kafka", f"reading {topic}[{partition}]: {msg.error()}")
                deadline = time.monotonic() + idle_timeout
                if stop is not None and msg.offset() >= stop:
                    break
                ts = msg.timestamp()[1]
                if rng.end_ms is not None and ts >= rng.end_ms:
                    break
                if rng.start_ms is not None and ts < rng.start_ms:
                    continue  # brokers differ in how exactly they answer offsets_for_times
                yield msg
            consumer.unassign()
    except KafkaException as exc:
        raise DependencyUnavailable("kafka", f"reading {topic}: {exc}") from exc
    finally:
        consumer.close()


def matches(record: dict[str, Any], filters: dict[str, str]) -> bool:
    """Whether every ``field=value`` filter holds (attributes are matched as ``attributes.key``)."""
    for key, want in filters.items():
        if key.startswith("attributes."):
            have = record.get("attributes", {}).get(key.split(".", 1)[1])
        else:
            have = record.get(key)
        if str(have) != want:
            return False
    return True


def replay_requests(settings: KafkaSettings, topic: str, rng: Range, filters: dict[str, str], *,
                    new_job_id: Callable[[], str], dry_run: bool = False) -> ReplayReport:
    codec = AvroCodec("SynthesisRequest")
    report = ReplayReport()
    producer = None if dry_run else Producer({**settings.client_config(), "enable.idempotence": True})
    failures: list[str] = []
    # Replay writes into the topic it reads: stop at what was there when it started, or it would read
    # (and replay) its own output.
    started_ms = int(time.time() * 1000)
    rng = replace(rng, end_ms=min(rng.end_ms, started_ms) if rng.end_ms is not None else started_ms)
    for msg in read_range(settings, topic, rng):
        report.read += 1
        try:
            record = codec.decode(msg.value())
        except DecodeError:
            report.undecodable += 1  # these are on the dead-letter topic already; redrive them instead
            continue
        if not matches(record, filters):
            continue
        report.matched += 1
        if producer is None:
            continue
        job_id = new_job_id()
        record = {**record, "job_id": job_id, "created_at": int(time.time() * 1000),
                  "attributes": {**record.get("attributes", {}), "replay_of": record["job_id"]}}
        producer.produce(topic, key=job_id.encode(), value=codec.encode(record),
                         on_delivery=lambda err, _m: failures.append(str(err)) if err else None)
        producer.poll(0)
        report.published += 1
    if producer is not None and producer.flush(30) > 0 or failures:
        raise PublishError(f"replay: {len(failures)} records not acknowledged: {failures[:3]}")
    return report


def redrive_dead_letters(settings: KafkaSettings, dead_letter_topic: str, *, error_type: str | None = None,
                         source_topic: str | None = None, dry_run: bool = False) -> ReplayReport:
    codec = AvroCodec("DeadLetter")
    report = ReplayReport()
    producer = None if dry_run else Producer({**settings.client_config(), "enable.idempotence": True})
    failures: list[str] = []
    for msg in read_range(settings, dead_letter_topic, Range()):
        report.read += 1
        letter = codec.decode(msg.value())
        if (error_type and letter["error_type"] != error_type) or (source_topic and letter["source_topic"] != source_topic):
            continue
        report.matched += 1
        if producer is None:
            continue
        headers = list(letter["headers"].items()) + [("voicenote-redrive-of", f"{letter['source_topic']}:{letter['source_partition']}:{letter['source_offset']}".encode())]
        producer.produce(letter["source_topic"], key=letter["key"], value=letter["value"], headers=headers,
                         on_delivery=lambda err, _m: failures.append(str(err)) if err else None)
        producer.poll(0)
        report.published += 1
    if producer is not None and producer.flush(30) > 0 or failures:
        raise PublishError(f"redrive: {len(failures)} records not acknowledged: {failures[:3]}")
    return report
