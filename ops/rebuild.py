"""``voicenote projection rebuild``: replay the request and completion topics into Redis.

Kafka is the source of truth; the job records in Redis are a projection of it. Replaying every
retained request and completion through the same StatusProjector the workers use rebuilds the records
in an empty Redis (or repairs a partial one: transitions only move forward, so the replay order and
records already present do not matter). Events older than the record TTL are skipped, as their
records would already have expired.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from schemas.codec import Codecs
from schemas.errors import DecodeError
from schemas.topics import build_catalog
from stream_workers.completion import StatusProjector
from voicenote.errors import DependencyUnavailable
from voicenote.jobstore import JobStore
from voicenote.settings import Settings


@dataclass
class RebuildReport:
    requests: int = 0
    completions: int = 0
    skipped_expired: int = 0
    undecodable: int = 0


def _partitions(consumer: Consumer, topic: str, timeout: float) -> list[TopicPartition]:
    meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None:
        raise DependencyUnavailable("kafka", f"topic {topic} is not available: {getattr(meta, 'error', 'missing')}")
    return [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]


async def rebuild(settings: Settings, jobs: JobStore, *, timeout: float = 15.0) -> RebuildReport:
    """Replay both topics from their beginning up to their current end; returns what was applied."""
    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=settings.kafka.request_partitions,
                            partitions=settings.kafka.partitions)
    codecs = Codecs()
    projector = StatusProjector(jobs)
    report = RebuildReport()
    oldest = int(time.time() * 1000) - settings.redis.job_ttl_seconds * 1000
    consumer = Consumer({**settings.kafka.client_config(), "group.id": f"voicenote-rebuild-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        assignment = [*_partitions(consumer, catalog.requests.name, timeout),
                      *_partitions(consumer, catalog.completions.name, timeout)]
        ends: dict[tuple[str, int], int] = {}
        for tp in assignment:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            if high > low:
                ends[(tp.topic, tp.partition)] = high
        consumer.assign([tp for tp in assignment if (tp.topic, tp.partition) in ends])
        deadline = time.monotonic() + max(timeout, 60.0)
        while ends:
            if time.monotonic() > deadline:
                raise DependencyUnavailable("kafka", f"replay stalled with {len(ends)} partitions unfinished")
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            key = (str(msg.topic()), int(msg.partition() or 0))
            offset = int(msg.offset() or 0)
            if key in ends and offset + 1 >= ends[key]:
                del ends[key]
            is_request = key[0] == catalog.requests.name
            try:
                record = (codecs.request if is_request else codecs.completion).decode(msg.value())
            except DecodeError:
                report.undecodable += 1  # already dead-lettered by the workers when it first arrived
                continue
            if (record.get("completed_at") or record["created_at"]) < oldest:
                report.skipped_expired += 1
                continue
            if is_request:
                await projector.on_request(record)
                report.requests += 1
            else:
                await projector.on_completion(record)
                report.completions += 1
    finally:
        consumer.close()
    return report
