"""``voicenote projection rebuild``: replay the request and completion topics into Redis.

Kafka is the source of truth; the job records in Redis are a projection of it. Replaying every
retained request and completion through the same StatusProjector the workers use rebuilds the records
in an empty Redis (or repairs a partial one: transitions only move forward, so the replay order and
records already present do not matter). Events older than the record TTL are skipped, as their
records would already have expired.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ops.replay import Range, read_range
from schemas.codec import Codecs
from schemas.errors import DecodeError
from stream_workers.completion import StatusProjector
from voicenote.jobstore import JobStore
from voicenote.settings import Settings


@dataclass
class RebuildReport:
    requests: int = 0
    completions: int = 0
    skipped_expired: int = 0
    undecodable: int = 0


async def rebuild(settings: Settings, jobs: JobStore, *,
                  progress: Callable[[RebuildReport], None] | None = None) -> RebuildReport:
    """Replay the request topics and the completion topic from their beginning up to their current end; returns what was applied."""
    catalog = settings.kafka.catalog()
    codecs = Codecs()
    projector = StatusProjector(jobs)
    report = RebuildReport()
    oldest = int(time.time() * 1000) - settings.redis.job_ttl_seconds * 1000
    request_topics = [spec.name for spec in catalog.request_topics()]  # every model family's
    for topic, codec in (*((name, codecs.request) for name in request_topics), (catalog.completions.name, codecs.completion)):
        is_request = topic in request_topics
        for msg in read_range(settings.kafka, topic, Range()):
            if progress is not None:
                progress(report)
            try:
                record = codec.decode(msg.value())
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
    return report
