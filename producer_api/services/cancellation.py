"""Cancellation: a queued job ends ``cancelled`` in its record; the synthesis worker reads it and skips the job."""

from __future__ import annotations

from producer_api.auth import Caller
from producer_api.errors import ApiError
from producer_api.models import JobView
from producer_api.services.queries import JobQueries
from schemas.clock import now_ms
from schemas.status import JobStatus
from voicenote.jobstore import JobStore


class Cancellation:
    def __init__(self, *, queries: JobQueries, jobs: JobStore) -> None:
        self._queries = queries
        self._jobs = jobs

    async def cancel(self, caller: Caller, job_id: str) -> JobView:
        record = await self._queries.owned(caller, job_id)
        if record["status"] != JobStatus.queued.value:
            raise ApiError(409, f"job {job_id} is {record['status']}; only a queued job can be cancelled",
                           code="job_not_cancellable", param="job_id")
        moved = await self._jobs.transition(job_id, JobStatus.cancelled, {
            "completed_at": now_ms(), "error_code": "cancelled", "error_message": f"cancelled by {caller.name}"})
        record = await self._queries.owned(caller, job_id)
        # Lost the race to a worker (running) or a completion: say what it is now.
        if not moved and record["status"] != JobStatus.cancelled.value:
            raise ApiError(409, f"job {job_id} is {record['status']}; only a queued job can be cancelled",
                           code="job_not_cancellable", param="job_id")
        return self._queries.render(job_id, record)
