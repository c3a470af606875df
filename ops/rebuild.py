"""``voicenote projection rebuild``: replay the request and completion topics into Redis.

Kafka is the source of truth; the job records in Redis are a projection of it. Replaying every
retained request and completion through the same StatusProjector the workers use rebuilds the records
in an empty Redis (or repairs a partial one: transitions only move forward, so the replay order and
records already present do not matter). Events older than the record TTL are skipped, as their
records would already have expired. The replay also restores the batch records and Idempotency-Key
answers the request events describe, and each job's webhook delivery state from the webhook deliveries topic
(stream_workers/completion/restoration.py); not rate-limit buckets. The completion
worker runs the same replay by itself when Redis comes back empty (stream_workers/completion/projection.py).
"""

from __future__ import annotations

from stream_workers.completion.projection import RebuildReport, rebuild

__all__ = ["RebuildReport", "rebuild"]
