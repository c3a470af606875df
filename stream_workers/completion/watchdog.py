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

A broker that lost its data is said sooner (issue 22, item 5): a worker that sees it (its group's committed
offsets or a partition's end going backwards, stream_workers/runtime/progress.py) records when in Redis and exits;
:class:`LostRequests` (the completion worker, every ``worker.projection_check_seconds``) then ends, as
``failed`` with ``broker_data_lost``, every job indexed before that moment whose request is not on the request
topics any more, through the same completion event. It waits :data:`LOSS_GRACE_SECONDS` after the loss first, so
that requests a producer still held through the outage are on the broker before the topics are read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from schemas.events import JobCompletion
from schemas.status import JobStatus
from schemas.validation import valid_job_id
from stream_workers.completion.status import COMPLETION_EMITTED_FIELD, StatusProjector
from voicenote.jobstore import JobStore

log = logging.getLogger(__name__)

STUCK_CODE = "stuck_timeout"
DATA_LOST_CODE = "broker_data_lost"
LOSS_GRACE_SECONDS = 15.0
# The job-record fields a failed completion is built from, and that tell a finished job.
RECORD_FIELDS = ("status", COMPLETION_EMITTED_FIELD, "created_at", "webhook_url", "batch_id", "format")


def stuck_completion(job_id: str, record: dict[str, str] | None, now_ms: int, stuck_after: float) -> JobCompletion:
    """The failed completion event of a stuck job, from what its record still holds."""
    return failed_completion(job_id, record, now_ms, STUCK_CODE,
                             f"the job did not finish within {stuck_after:.0f}s of its submission and was ended by the "
                             "watchdog (its request was probably lost by the broker); submit it again")


def failed_completion(job_id: str, record: dict[str, str] | None, now_ms: int, code: str, message: str) -> JobCompletion:
    record = record or {}
    created_at = int(record.get("created_at") or now_ms)
    return JobCompletion(
        job_id=job_id, status=JobStatus.failed.value, created_at=created_at, completed_at=now_ms,
        error_code=code, format=record.get("format") or "wav", error_message=message,
        webhook_url=record.get("webhook_url") or None, batch_id=record.get("batch_id") or None, cache_hit=False,
    )


def finished_record(record: dict[str, str] | None) -> bool:
    """Whether a job record is past its completion: the completion was emitted, or the status is terminal."""
    status = (record or {}).get("status")
    return bool(record and (record.get(COMPLETION_EMITTED_FIELD) or (status and JobStatus(status).terminal)))


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
        records = await self._jobs.get_fields_many(due, RECORD_FIELDS)
        finished, stuck = [], []
        for job_id, record in zip(due, records, strict=True):
            if finished_record(record):
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


class LostRequests:
    """Ends as ``broker_data_lost`` the jobs whose requests a broker lost (the loss recorded by a worker).

    ``request_ids`` reads the job ids of every request now on the request topics (blocking reads, run in a
    thread by the caller). A job indexed before the loss and absent from them went with the broker's data; one
    still there (published again after the restart, or held by its producer through the outage) is left to run.
    """

    def __init__(self, jobs: JobStore, projector: StatusProjector,
                 emit: Callable[[Sequence[JobCompletion]], Awaitable[None]],
                 request_ids: Callable[[], Awaitable[set[str]]], *, grace: float = LOSS_GRACE_SECONDS,
                 batch: int = 500, clock: Callable[[], float] = time.time) -> None:
        self._jobs, self._projector, self._emit, self._request_ids = jobs, projector, emit, request_ids
        self._grace, self._batch, self._clock = grace, batch, clock
        self.ended = 0

    async def sweep(self) -> list[str]:
        """Handle the losses recorded at least ``grace`` seconds ago; returns the ids of the jobs ended."""
        now_ms = int(self._clock() * 1000)
        losses = [at for at in await self._jobs.broker_data_losses() if at <= now_ms - self._grace * 1000]
        if not losses:
            return []
        present = await self._request_ids()
        ended: list[str] = []
        start = 0
        while due := await self._jobs.pending_before(max(losses) + 1, self._batch, start):
            candidates = [job_id for job_id in due if valid_job_id(job_id)]  # invalid ones: the watchdog drops them
            records = await self._jobs.get_fields_many(candidates, RECORD_FIELDS) if candidates else []
            finished = [job_id for job_id, record in zip(candidates, records, strict=True) if finished_record(record)]
            lost = [failed_completion(job_id, record, now_ms, DATA_LOST_CODE,
                                      "the broker lost this job's request (it restarted without its data) before the "
                                      "job finished; submit it again")
                    for job_id, record in zip(candidates, records, strict=True)
                    if not finished_record(record) and job_id not in present]
            if lost:
                await self._emit(lost)  # the events first, as the watchdog does
                await self._projector.on_completions(lost)
                ended += [c.job_id for c in lost]
            await self._jobs.untrack_pending(finished)
            start += len(due) - len(lost) - len(finished)  # what stays indexed (still on the topic) is skipped
        if ended:
            self.ended += len(ended)
            log.warning("the broker lost the requests of %d jobs; ended them as %s: %s", len(ended), DATA_LOST_CODE,
                        ", ".join(ended[:10]))
        else:
            log.info("the broker lost data; every job indexed before it still has its request on the topics")
        await self._jobs.forget_broker_data_losses(losses)
        return ended
