"""Replaying a topic range and redriving dead letters.

Replay reads request events in a time or offset range (optionally filtered) and publishes them again
as new jobs: the old job ids already reached a terminal state, which the workers never redo, so each
replayed request gets a fresh job id and keeps the old one in ``attributes["replay_of"]``.
Redrive publishes dead letters' original bytes back to their source topic once the cause is fixed
(webhook letters go to the first webhook retry topic instead); a consumer group per selection records
what has been redriven, so a second run publishes only letters that arrived since.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from schemas.clock import now_ms
from schemas.codec import Codecs
from schemas.errors import DecodeError
from schemas.events import REPLAY_OF_ATTRIBUTE, DeadLetter
from voicenote.errors import DependencyUnavailable, PublishError
from voicenote.kafka import KafkaException, TopicPartition, event_codecs, read_to_end
from voicenote.kafka import consumer as new_consumer
from voicenote.kafka import producer as new_producer
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


READ_TIMEOUT_SECONDS = 300.0


def read_range(settings: KafkaSettings, topic: str, rng: Range, *, timeout: float = READ_TIMEOUT_SECONDS) -> Iterator[Any]:
    """Every message of ``topic`` inside ``rng``, all partitions read together, without joining a group.

    Each partition is read up to its end as it was when reading began (voicenote.kafka.read_to_end), so a
    reader that publishes into the topic it reads never reads its own output, and a read is never cut
    short by a slow broker: it is whole, or DependencyUnavailable after ``timeout`` seconds.
    """
    consumer = new_consumer(settings, f"voicenote-replay-{time.time_ns()}", {"enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise DependencyUnavailable("kafka", f"topic {topic} does not exist")
        starts: dict[int, int] = {}
        for partition in sorted(rng.partitions or meta.partitions.keys()):
            low, _high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            start = max(low, rng.start_offset) if rng.start_offset is not None else low
            if rng.start_ms is not None:
                found = consumer.offsets_for_times([TopicPartition(topic, partition, rng.start_ms)], timeout=10)[0]
                if found.offset < 0:
                    continue  # nothing at or after start_ms in this partition
                start = max(start, found.offset)
            starts[partition] = start
    except KafkaException as exc:
        raise DependencyUnavailable("kafka", f"reading {topic}: {exc}") from exc
    finally:
        consumer.close()
    stops = dict.fromkeys(starts, rng.end_offset) if rng.end_offset is not None else None
    for msg in read_to_end(settings, topic, starts=starts, stops=stops, timeout=timeout, group_prefix="voicenote-replay"):
        ts = msg.timestamp()[1]
        if rng.end_ms is not None and ts >= rng.end_ms:
            continue
        if rng.start_ms is not None and ts < rng.start_ms:
            continue  # brokers differ in how exactly they answer offsets_for_times
        yield msg


def matches(record: Mapping[str, Any], filters: dict[str, str]) -> bool:
    """Whether every ``field=value`` filter holds (attributes are matched as ``attributes.key``).

    ``voice`` matches what the user asked for (the API keeps it in ``attributes.voice_requested``) as
    well as the installed voice id the event carries, so ``voice=alloy`` finds jobs requested as alloy.
    """
    # A mapping, not an event: filters name wire fields, and `voicenote completions tail` filters the
    # client's completion records with the same rules.
    for key, want in filters.items():
        if key.startswith("attributes."):
            have = [record.get("attributes", {}).get(key.split(".", 1)[1])]
        elif key == "voice":
            have = [record.get("voice"), record.get("attributes", {}).get("voice_requested")]
        else:
            have = [record.get(key)]
        if want not in {str(h) for h in have}:
            return False
    return True


def replay_requests(settings: KafkaSettings, topic: str, rng: Range, filters: dict[str, str], *,
                    new_job_id: Callable[[], str], dry_run: bool = False,
                    progress: Callable[[ReplayReport], None] | None = None,
                    on_published: Callable[[str, str], None] | None = None, codecs: Codecs | None = None) -> ReplayReport:
    """Publish the requests of ``rng`` that match ``filters`` again as new jobs; ``on_published(new_job_id,
    replay_of)`` is called for each one once the broker acknowledged it. Records are read, and the new ones
    written, with the deployment's codec (voicenote.kafka.event_codecs: the schema registry when one is set)."""
    codec = (codecs or event_codecs(settings)).request
    report = ReplayReport()
    producer = None if dry_run else new_producer(settings, {"enable.idempotence": True})
    failures: list[str] = []
    # Replay writes into the topic it reads: stop at what was there when it started, or it would read
    # (and replay) its own output.
    started_ms = now_ms()
    rng = replace(rng, end_ms=min(rng.end_ms, started_ms) if rng.end_ms is not None else started_ms)
    for msg in read_range(settings, topic, rng):
        report.read += 1
        if progress is not None:
            progress(report)
        try:
            request = codec.decode_event(msg.value())
        except DecodeError:
            report.undecodable += 1  # these are on the dead-letter topic already; redrive them instead
            continue
        if not matches(request.to_record(), filters):
            continue
        report.matched += 1
        if producer is None:
            continue
        job_id = new_job_id()
        replayed = replace(request, job_id=job_id, created_at=now_ms(),
                           attributes={**request.attributes, REPLAY_OF_ATTRIBUTE: request.job_id})

        def delivered(err: Any, _msg: Any, job_id: str = job_id, replay_of: str = request.job_id) -> None:
            if err:
                failures.append(str(err))
            elif on_published is not None:
                on_published(job_id, replay_of)

        producer.produce(topic, key=job_id.encode(), value=codec.encode_event(replayed), on_delivery=delivered)
        producer.poll(0)
        report.published += 1
    if producer is not None and producer.flush(30) > 0 or failures:
        raise PublishError(f"replay: {len(failures)} records not acknowledged: {failures[:3]}")
    return report


def redrive_group(base: str, kind: str, **selection: str | None) -> str:
    """The consumer group that records what one selection of letters has had redriven.

    Each selection (``--error-type``, ``--source-topic``) keeps its own position, so redriving one kind
    of letter never passes over letters of another kind that are not fixed yet.
    """
    chosen = ",".join(f"{k}={v}" for k, v in sorted(selection.items()) if v)
    return f"{base}-{kind}-redrive" + (f".{chosen}" if chosen else "")


class GroupCursor:
    """Reads a topic from a consumer group's committed position to the current end, then commits.

    The commit happens only after what was read has been republished and acknowledged: a crash in
    between redrives those letters again next time (at least once), never skips one.
    """

    def __init__(self, settings: KafkaSettings, topic: str, group_id: str, *, idle_timeout: float = 2.0) -> None:
        self.topic = topic
        self._idle_timeout = idle_timeout
        self._next: dict[int, int] = {}
        self._consumer = new_consumer(settings, group_id, {"enable.auto.commit": False, "enable.partition.eof": True})

    def __iter__(self) -> Iterator[Any]:
        try:
            meta = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if meta is None or meta.error is not None:
                raise DependencyUnavailable("kafka", f"topic {self.topic} does not exist (create it with `voicenote topics create`)")
            committed = self._consumer.committed([TopicPartition(self.topic, p) for p in sorted(meta.partitions)], timeout=10)
            for tp in committed:
                start = tp.offset if tp.offset >= 0 else -2  # OFFSET_BEGINNING when nothing is committed yet
                self._consumer.assign([TopicPartition(self.topic, tp.partition, start)])
                deadline = time.monotonic() + self._idle_timeout
                while time.monotonic() < deadline:
                    msg = self._consumer.poll(0.2)
                    if msg is None:
                        continue
                    error = msg.error()
                    if error is not None:
                        if error.code() == -191:  # _PARTITION_EOF
                            break
                        raise DependencyUnavailable("kafka", f"reading {self.topic}[{tp.partition}]: {error}")
                    deadline = time.monotonic() + self._idle_timeout
                    self._next[tp.partition] = (msg.offset() or 0) + 1
                    yield msg
                self._consumer.unassign()
        except KafkaException as exc:
            raise DependencyUnavailable("kafka", f"reading {self.topic}: {exc}") from exc

    def commit(self) -> None:
        """Record everything read as handled."""
        if not self._next:
            return
        try:
            self._consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in self._next.items()], asynchronous=False)
        except KafkaException as exc:
            raise DependencyUnavailable("kafka", f"recording the redrive position on {self.topic}: {exc}") from exc

    def close(self) -> None:
        self._consumer.close()


Headers = list[tuple[str, str | bytes | None]]


def redrive_dead_letters(settings: KafkaSettings, dead_letter_topic: str, *, group_id: str, error_type: str | None = None,
                         source_topic: str | None = None, dry_run: bool = False,
                         progress: Callable[[ReplayReport], None] | None = None) -> ReplayReport:
    """Publish the letters not yet redriven by ``group_id`` back to their source topic (original bytes)."""

    def target(letter: DeadLetter) -> tuple[str, Headers]:
        return letter.source_topic, [*letter.headers.items(), ("voicenote-redrive-of", _origin(letter).encode())]

    return _redrive(settings, dead_letter_topic, group_id, target, dry_run=dry_run, progress=progress,
                    select=lambda letter: (not error_type or letter.error_type == error_type)
                    and (not source_topic or letter.source_topic == source_topic))


def redrive_webhooks(settings: KafkaSettings, webhook_dead_letter_topic: str, first_retry_topic: str, *, group_id: str,
                     error_type: str | None = None, job_id: str | None = None, dry_run: bool = False,
                     progress: Callable[[ReplayReport], None] | None = None) -> ReplayReport:
    """Send dead-lettered webhook deliveries again: one more attempt each, due now.

    The completion goes to the first retry topic rather than back to the completion topic, where every
    completion consumer would see the job complete a second time. The attempt count goes on from the
    letter's (the job record never counts backwards); a redriven attempt that fails is dead-lettered
    again at once, and can be redriven again.
    """

    def target(letter: DeadLetter) -> tuple[str, Headers]:
        attempt = int(letter.headers.get("webhook-attempt", b"0") or 0) + 1
        return first_retry_topic, [("webhook-attempt", str(attempt).encode()), ("webhook-due-at", str(now_ms()).encode()),
                                   ("webhook-log", letter.headers.get("webhook-log", b"[]")),
                                   ("voicenote-redrive-of", _origin(letter).encode())]

    return _redrive(settings, webhook_dead_letter_topic, group_id, target, dry_run=dry_run, progress=progress,
                    select=lambda letter: (not error_type or letter.error_type == error_type)
                    and (not job_id or (letter.key or b"").decode(errors="replace") == job_id))


def _origin(letter: DeadLetter) -> str:
    return f"{letter.source_topic}:{letter.source_partition}:{letter.source_offset}"


def _redrive(settings: KafkaSettings, topic: str, group_id: str,
             target: Callable[[DeadLetter], tuple[str, Headers]], *,
             select: Callable[[DeadLetter], bool], dry_run: bool,
             progress: Callable[[ReplayReport], None] | None, codecs: Codecs | None = None) -> ReplayReport:
    codec = (codecs or event_codecs(settings)).dead_letter  # letters are written with the registry when one is set
    report = ReplayReport()
    producer = None if dry_run else new_producer(settings, {"enable.idempotence": True})
    failures: list[str] = []
    cursor = GroupCursor(settings, topic, group_id)
    try:
        for msg in cursor:
            report.read += 1
            if progress is not None:
                progress(report)
            try:
                letter = codec.decode_event(msg.value())
            except DecodeError:
                report.undecodable += 1  # not a letter we wrote; left where it is, counted
                continue
            if not select(letter):
                continue
            report.matched += 1
            if producer is None:
                continue
            destination, headers = target(letter)
            producer.produce(destination, key=letter.key, value=letter.value, headers=headers,
                             on_delivery=lambda err, _m: failures.append(str(err)) if err else None)
            producer.poll(0)
            report.published += 1
        if producer is None:
            return report  # a dry run records nothing
        remaining = producer.flush(30)
        if remaining or failures:
            raise PublishError(f"redrive: {remaining + len(failures)} records not acknowledged, nothing recorded as redriven "
                               f"(run it again): {failures[:3]}")
        cursor.commit()
        return report
    finally:
        cursor.close()
