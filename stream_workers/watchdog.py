"""No job stays non-final forever: the completion worker ends jobs that are stuck.

Every request the status projection sees is indexed (a sorted set by ``created_at``) until its
completion is projected. Every ``worker.watchdog_interval_seconds`` the completion worker looks at the
jobs indexed longer than ``worker.stuck_after_seconds`` (two hours by default, far beyond any queue the
service should have). Those that have their completion by now are dropped from the index; the rest are
ended as ``failed`` with the code ``stuck_timeout``: a completion event like any other (so completion
consumers, the projection and webhooks all hear of it), marked as emitted, so a result that still
arrives later is dropped by the storage agent as a second outcome.

Why fail rather than re-submit: a job is stuck only when its request is gone from the pipeline
(a broker that lost its data, a request topic past retention, a bug); re-submitting would need a copy
of every request kept outside Kafka, and a job re-run hours late surprises its caller more than an
error that says what happened. The caller can submit again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from schemas.events import JobCompletion
from schemas.status import JobStatus
from schemas.validation import valid_job_id
from stream_workers.completion import COMPLETION_EMITTED_FIELD, StatusProjector
from voicenote.jobstore import JobStore

log = logging.getLogger(__name__)

STUCK_CODE = "stuck_timeout"
_FIELDS = ("status", COMPLETION_EMITTED_FIELD, "created_at", "webhook_url", "batch_id", "format")


def stuck_completion(job_id: str, record: dict[str, str] | None, now_ms: int, stuck_after: float) -> JobCompletion:
    """The failed completion event of a stuck job, from what its record still holds."""
    record = record or {}
    created_at = int(record.get("created_at") or now_ms)
    return JobCompletion(
        job_id=job_id, status=JobStatus.failed.value, created_at=created_at, completed_at=now_ms,
        error_code=STUCK_CODE, format=record.get("format") or "wav",
        error_message=f"the job did not finish within {stuck_after:.0f}s of its submission and was ended by the "
                      "watchdog (its request was probably lost by the broker); submit it again",
        webhook_url=record.get("webhook_url") or None, batch_id=record.get("batch_id") or None, cache_hit=False,
    )


class Watchdog:
    def __init__(self, jobs: JobStore, projector: StatusProjector,
                 emit: Callable[[Sequence[JobCompletion]], Awaitable[None]], *, stuck_after: float,
                 batch: int = 500, clock: Callable[[], float] = time.time) -> None:
        self._jobs = jobs
        self._projector = projector
        self._emit = emit
        self._stuck_after = stuck_after
        self._batch = batch
        self._clock = clock
        self.ended = 0

    async def sweep(self) -> list[str]:
        """End the jobs stuck past the limit; returns their ids."""
        now_ms = int(self._clock() * 1000)
        due = await self._jobs.pending_before(now_ms - int(self._stuck_after * 1000), self._batch)
        if not due:
            return []
        # An id that is not a job id was indexed by mistake (before issue 25's fix, a dead-lettered request was
        # indexed too): it is dropped, never ended. A completion under it would carry an invalid id to every consumer.
        invalid = [job_id for job_id in due if not valid_job_id(job_id)]
        if invalid:
            log.warning("watchdog drops %d invalid job ids from the pending index: %s", len(invalid),
                        ", ".join(repr(j)[:80] for j in invalid[:10]))
            await self._jobs.untrack_pending(invalid)
            due = [job_id for job_id in due if valid_job_id(job_id)]
            if not due:
                return []
        records = await self._jobs.get_fields_many(due, _FIELDS)
        finished, stuck = [], []
        for job_id, record in zip(due, records, strict=True):
            status = (record or {}).get("status")
            if record and (record.get(COMPLETION_EMITTED_FIELD) or (status and JobStatus(status).terminal)):
                finished.append(job_id)  # completed after all (the index is only a hint)
            else:
                stuck.append(stuck_completion(job_id, record, now_ms, self._stuck_after))
        if stuck:
            # The events first: a job never reads as ended before its completion event exists.
            await self._emit(stuck)
            await self._projector.on_completions(stuck)
            self.ended += len(stuck)
            log.warning("watchdog ended %d stuck jobs as %s: %s", len(stuck), STUCK_CODE,
                        ", ".join(c.job_id for c in stuck[:10]))
        await self._jobs.untrack_pending(finished)
        return [c.job_id for c in stuck]
