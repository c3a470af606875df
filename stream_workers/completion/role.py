"""The completion role assembled from a worker's context: its consumers (handler.py) and its timed rounds.

Each round is a method the Faust app runs on a timer (stream_workers/app.py). A timer, not a consumer: a
round that fails (broker or Redis away) is logged and runs again next interval.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from schemas.codec import Codecs
from schemas.errors import DecodeError
from schemas.topics import CPU_FAMILY, TopicCatalog
from stream_workers.completion.early_check import EarlyCheck, EarlyCheckMetrics, Facts, topic_facts
from stream_workers.completion.handler import CompletionHandler, SendCompletion, SendDeadLetter
from stream_workers.completion.projection import READ_TIMEOUT_SECONDS, ProjectionGuard
from stream_workers.completion.projection import rebuild as rebuild_projection
from stream_workers.completion.status import StatusProjector
from stream_workers.completion.storage import Storer
from stream_workers.completion.watchdog import LostRequests, Watchdog
from stream_workers.runtime.context import WorkerContext
from stream_workers.runtime.metrics import CompletionMetrics
from voicenote.errors import DependencyUnavailable
from voicenote.kafka import read_to_end
from voicenote.models import synthesis_group
from voicenote.settings import Settings
from voicenote.storage.local import LocalAudioStore

log = logging.getLogger(__name__)


@dataclass
class CompletionRole:
    handler: CompletionHandler
    guard: ProjectionGuard
    watchdog: Watchdog
    lost_requests: LostRequests
    early_check: EarlyCheck
    local_store: LocalAudioStore | None  # the store itself when it is local (it expires its own files)
    settings: Settings

    @classmethod
    def build(cls, ctx: WorkerContext, send_completion: SendCompletion, send_dead_letter: SendDeadLetter) -> CompletionRole:
        jobs, s, cat = ctx.jobs, ctx.settings, ctx.catalog
        assert jobs is not None, "the completion role needs the job store"
        storer = Storer(ctx.store, s.storage, public_base_url=s.api.public_base_url, cache=ctx.cache)
        projector = StatusProjector(jobs)
        metrics = CompletionMetrics()
        handler = CompletionHandler(ctx.codecs, storer, projector, send_completion, send_dead_letter, metrics)
        request_groups = {spec.name: synthesis_group(s.worker.group_id, family)
                          for family, spec in [(CPU_FAMILY, cat.requests), *cat.family_requests]}

        def overdue_facts(job_ids: list[str]) -> dict[str, Facts]:
            return topic_facts(s.kafka, ctx.codecs, job_ids, request_topics=request_groups, audio_topic=cat.audio.name,
                               completion_topic=cat.completions.name, timeout=READ_TIMEOUT_SECONDS)

        local = getattr(ctx.store, "inner", ctx.store)  # the store itself, not its retrying proxy
        return cls(
            handler=handler,
            guard=ProjectionGuard(jobs, lambda: rebuild_projection(s, jobs, ctx.codecs)),
            watchdog=Watchdog(jobs, projector, handler.emit, stuck_after=s.worker.stuck_after_seconds),
            lost_requests=LostRequests(jobs, projector, handler.emit,
                                       lambda: asyncio.to_thread(published_request_ids, s, cat, ctx.codecs)),
            early_check=EarlyCheck(jobs, projector, handler.emit, lambda job_ids: asyncio.to_thread(overdue_facts, job_ids),
                                   handler.reapply, factor=s.worker.early_check_factor,
                                   floor=s.worker.early_check_floor_seconds, stuck_after=s.worker.stuck_after_seconds,
                                   metrics=EarlyCheckMetrics(metrics.registry)),
            local_store=local if isinstance(local, LocalAudioStore) else None,
            settings=s,
        )

    async def heal_projection(self) -> None:
        """Redis restarted empty: rebuild from the topics without an operator (projection.py). Job-store calls
        wait out an outage; a failed topic read is logged and tried next time."""
        try:
            await self.guard.check()
        except DependencyUnavailable as exc:
            log.warning("projection check failed, trying again in %.0fs: %s", self.settings.worker.projection_check_seconds, exc)

    async def end_lost_requests(self) -> None:
        """The broker lost data (a worker recorded it, stream_workers/runtime/progress.py): the jobs whose requests
        went with it end as broker_data_lost."""
        try:
            await self.lost_requests.sweep()
        except Exception:  # noqa: BLE001
            log.exception("lost-request sweep failed; trying again in %.0fs", self.settings.worker.projection_check_seconds)

    async def check_overdue_jobs(self) -> None:
        """Jobs past their estimate times a factor, re-examined against the topics (early_check.py)."""
        try:
            await self.early_check.sweep()
        except Exception:  # noqa: BLE001
            log.exception("early check failed; trying again in %.0fs", self.settings.worker.watchdog_interval_seconds)

    async def end_stuck_jobs(self) -> None:
        """Jobs past ``worker.stuck_after_seconds`` end as failed (watchdog.py)."""
        try:
            await self.watchdog.sweep()
        except Exception:  # noqa: BLE001
            log.exception("watchdog sweep failed; trying again in %.0fs", self.settings.worker.watchdog_interval_seconds)

    async def expire_local_audio(self) -> None:
        """The local counterpart of the S3 lifecycle rule (reads already refuse expired files)."""
        if self.local_store is None:
            return
        removed = await self.local_store.expire()
        if removed:
            log.info("expired %d local audio files", len(removed))


def published_request_ids(settings: Settings, catalog: TopicCatalog, codecs: Codecs) -> set[str]:
    """The job ids of every request now on the request topics (blocking: run it in a thread). Keyed by job id (the
    API's and the worker's records); an unkeyed direct publish is decoded."""
    ids: set[str] = set()
    for spec in catalog.request_topics():
        for msg in read_to_end(settings.kafka, spec.name, timeout=READ_TIMEOUT_SECONDS,
                               group_prefix="voicenote-lost-requests", missing_ok=True):
            key, value = msg.key(), msg.value()
            if key:
                ids.add(key.decode(errors="replace"))
            elif value is not None:
                try:
                    ids.add(codecs.request.decode_event(value).job_id)
                except DecodeError:
                    continue  # not a request at all: no job of ours can be missing because of it
    return ids
