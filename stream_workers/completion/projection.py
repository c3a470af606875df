"""The status projection heals itself: a Redis that comes back empty is noticed and rebuilt from the topics.

Kafka is the source of truth and the job records in Redis a projection of it. The projection carries
an epoch key. Redis restarted without its data (no persistence, a new node, a flush) has no epoch
key: the completion worker checks for it every ``worker.projection_check_seconds`` and, when it is
missing, claims it (SET NX with a lease, so one worker of the group rebuilds), replays the request and
completion topics through the same :class:`StatusProjector` the agents use, then marks the epoch
built. A worker that dies mid-rebuild lets its lease expire and another one starts over. Transitions
only move forward, so a rebuild running alongside the live agents, or twice, changes nothing.

The same replay restores what the API kept beside the job records: batch records and Idempotency-Key
answers, rebuilt from the request events; and each job's webhook delivery state (delivered, retrying, failed,
refused, with its attempts), from the outcomes the webhooks worker records on the deliveries topic
(stream_workers/completion/restoration.py). Rate-limit buckets are not rebuilt: a bucket that starts full again after a
loss is accepted.

Until the rebuild is done, jobs finished before the loss answer 404 and new ones are projected as
usual. `voicenote projection rebuild` runs the same replay by hand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from schemas.clock import now_ms
from schemas.codec import Codecs
from schemas.errors import DecodeError
from schemas.events import SynthesisRequest, WebhookDelivery
from stream_workers.completion.restoration import batch_records, describes_api_records, idempotency_answers, webhook_states
from stream_workers.completion.status import StatusProjector
from voicenote.jobstore import JobStore
from voicenote.kafka import event_codecs, read_to_end
from voicenote.links import Links
from voicenote.settings import Settings

log = logging.getLogger(__name__)

_CHUNK = 500  # records applied per Redis round trip


@dataclass
class RebuildReport:
    requests: int = 0
    completions: int = 0
    skipped_expired: int = 0
    undecodable: int = 0
    batches: int = 0  # batch records restored
    batches_incomplete: int = 0  # batch ids on requests without a whole batch to restore (see restoration.py)
    idempotency_keys: int = 0  # Idempotency-Key answers restored (a key in use again since the loss keeps its own)
    webhook_outcomes: int = 0  # webhook delivery outcomes replayed (voicenote.webhooks.deliveries.v1)
    webhook_states: int = 0  # jobs whose webhook state was restored (one recorded since the loss, or newer, is kept)


READ_TIMEOUT_SECONDS = 300.0  # reading one topic to its end; past it the rebuild fails (a partial count never passes)


def read_topic(settings: Settings, topic: str, *, timeout: float = READ_TIMEOUT_SECONDS,
               missing_ok: bool = False) -> Iterator[bytes | None]:
    """The value of every retained record of ``topic``, all partitions, up to each partition's end as it was
    when reading began (voicenote.kafka.read_to_end: exact, or DependencyUnavailable after ``timeout``)."""
    for msg in read_to_end(settings.kafka, topic, timeout=timeout, group_prefix="voicenote-rebuild", missing_ok=missing_ok):
        yield msg.value()


def _read_all(settings: Settings, topic: str, timeout: float, missing_ok: bool = False) -> list[bytes | None]:
    return list(read_topic(settings, topic, timeout=timeout, missing_ok=missing_ok))


async def rebuild(settings: Settings, jobs: JobStore, codecs: Codecs | None = None, *,
                  progress: Callable[[RebuildReport], None] | None = None,
                  timeout: float = READ_TIMEOUT_SECONDS) -> RebuildReport:
    """Replay every model family's request topic and the completion topic, from their beginning up to their
    end as it was when the read of each began, into the projection, then restore the jobs' webhook states from the
    deliveries topic and the batch records and Idempotency-Key answers the requests describe; ``progress`` ticks
    once per record applied. Reading a
    topic takes at most ``timeout`` seconds, else DependencyUnavailable: the count is exact or the rebuild fails."""
    catalog = settings.kafka.catalog()
    codecs = codecs or event_codecs(settings.kafka)  # the registry too, when one is configured
    projector = StatusProjector(jobs)
    report = RebuildReport()
    oldest = now_ms() - settings.redis.job_ttl_seconds * 1000
    sources: list[tuple[str, Any, Callable[[Any], Awaitable[list[bool]]], bool]] = [
        (spec.name, codecs.request, projector.on_requests, True) for spec in catalog.request_topics()]
    sources.append((catalog.completions.name, codecs.completion, projector.on_completions, False))
    requests: list[SynthesisRequest] = []  # those of a batch or a key, whatever their age (their TTLs are their own)
    for topic, codec, apply, is_request in sources:
        values = await asyncio.to_thread(_read_all, settings, topic, timeout)
        records: list[Any] = []
        for value in values:
            try:
                record = codec.decode_event(value)
            except DecodeError:
                report.undecodable += 1  # already dead-lettered by the workers when it first arrived
                continue
            if is_request and describes_api_records(record):
                requests.append(record)
            if (getattr(record, "completed_at", 0) or record.created_at or 0) < oldest:
                report.skipped_expired += 1  # its record would already have expired
                continue
            records.append(record)
        for start in range(0, len(records), _CHUNK):
            chunk = records[start:start + _CHUNK]
            await apply(chunk)
            if is_request:
                report.requests += len(chunk)
            else:
                report.completions += len(chunk)
            if progress is not None:
                for _ in chunk:  # one tick per record applied
                    progress(report)
    await _restore_webhook_states(settings, jobs, codecs, oldest, timeout, report, progress)
    await _restore_api_records(settings, jobs, requests, report)
    return report


async def _restore_webhook_states(settings: Settings, jobs: JobStore, codecs: Codecs, oldest: int, timeout: float,
                                  report: RebuildReport, progress: Callable[[RebuildReport], None] | None) -> None:
    """Each job's webhook state, from the delivery outcomes the webhooks worker recorded (after the completions, whose
    projection wrote ``pending``), onto the job records that exist; a state recorded since the loss is kept."""
    topic = settings.kafka.catalog().webhook_deliveries
    if topic is None:
        return
    # A deployment older than the topic has none yet (the workers create it at start): nothing to restore, not a failure.
    values = await asyncio.to_thread(_read_all, settings, topic.name, timeout, True)
    outcomes: list[WebhookDelivery] = []
    for value in values:
        try:
            outcome = codecs.webhook_delivery.decode_event(value)
        except DecodeError:
            report.undecodable += 1
            continue
        if outcome.attempted_at < oldest:
            report.skipped_expired += 1  # its job's record would already have expired
            continue
        outcomes.append(outcome)
    report.webhook_outcomes = len(outcomes)
    if progress is not None:
        for _ in outcomes:
            progress(report)
    states = webhook_states(outcomes)
    for start in range(0, len(states), _CHUNK):
        report.webhook_states += await jobs.restore_webhooks(states[start:start + _CHUNK])


async def _restore_api_records(settings: Settings, jobs: JobStore, requests: list[SynthesisRequest], report: RebuildReport) -> None:
    """Batch records and Idempotency-Key answers, from the request events (stream_workers/completion/restoration.py)."""
    now = now_ms()
    batches = batch_records(requests)
    report.batches_incomplete = len(batches.incomplete)
    for start in range(0, len(batches.restored), _CHUNK):
        report.batches += await jobs.restore_batches([b.record for b in batches.restored[start:start + _CHUNK]], now)
    answers = idempotency_answers(requests, batches.restored, ttl_seconds=settings.api.idempotency_ttl_seconds, now_ms=now,
                                  links=Links(settings.api.public_base_url))
    for start in range(0, len(answers.kept), _CHUNK):
        report.idempotency_keys += await jobs.restore_answers(answers.kept[start:start + _CHUNK], now)


class ProjectionGuard:
    """Checks the projection's epoch and rebuilds the projection when Redis lost it."""

    LEASE_SECONDS = 600

    def __init__(self, jobs: JobStore, do_rebuild: Callable[[], Awaitable[RebuildReport]]) -> None:
        self._jobs = jobs
        self._rebuild = do_rebuild
        self.rebuilds = 0

    async def check(self) -> RebuildReport | None:
        """Rebuild if the epoch is missing and this worker wins the lease; the report, else None."""
        if await self._jobs.projection_epoch() is not None:
            return None
        if not await self._jobs.claim_projection_epoch(f"rebuilding:{time.time_ns()}", self.LEASE_SECONDS):
            return None  # another worker is rebuilding
        log.warning("the projection's epoch key is missing (Redis lost its data): rebuilding from the topics")
        started = time.monotonic()
        report = await self._rebuild()
        await self._jobs.set_projection_epoch(f"built:{time.time_ns()}")
        self.rebuilds += 1
        log.warning("projection rebuilt in %.1fs: %d requests, %d completions (%d past their TTL, %d undecodable), "
                    "%d batch records (%d incomplete batches left out), %d Idempotency-Key answers, %d webhook states "
                    "(from %d delivery outcomes)",
                    time.monotonic() - started, report.requests, report.completions, report.skipped_expired, report.undecodable,
                    report.batches, report.batches_incomplete, report.idempotency_keys, report.webhook_states,
                    report.webhook_outcomes)
        return report
