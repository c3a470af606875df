"""Queries: a job's record, shown only to its owner (or an admin), as the API's job view."""

from __future__ import annotations

from producer_api.auth import Caller
from producer_api.errors import ApiError
from producer_api.models import JobError, JobView, WebhookState
from producer_api.services.common import Links
from schemas.status import JobStatus
from voicenote.jobstore import JobStore


class JobQueries:
    def __init__(self, *, jobs: JobStore, links: Links) -> None:
        self._jobs = jobs
        self._links = links

    async def owned(self, caller: Caller, job_id: str) -> dict[str, str]:
        """The job's record; 404 when it is unknown, expired or another key's."""
        record = await self._jobs.get(job_id)
        # Another key's job looks like no job at all: ids are not confirmed to those who do not own them.
        # A job published straight to Kafka without attributes.owner belongs to no key: admin-only.
        if record is None or (record.get("owner") != caller.name and "admin" not in caller.scopes):
            raise ApiError(404, f"no job {job_id!r} (unknown, or expired)", code="job_not_found", param="job_id")
        return record

    async def view(self, caller: Caller, job_id: str) -> JobView:
        return self.render(job_id, await self.owned(caller, job_id))

    def render(self, job_id: str, record: dict[str, str]) -> JobView:
        status = record["status"]
        timings = {k: int(record[k]) for k in ("queued_ms", "batch_wait_ms", "engine_ms", "upload_ms") if k in record}
        error = None
        if status in (JobStatus.failed.value, JobStatus.cancelled.value) and (status == "failed" or "error_code" in record):
            error = JobError(code=record.get("error_code", "cancelled" if status == "cancelled" else "unknown"),
                             message=record.get("error_message", ""))
        ignored = record.get("ignored_params")
        return JobView(
            job_id=job_id, status=status, model=record.get("model"),
            ignored_params=ignored.split(",") if ignored else None,
            audio_url=self._links.audio(job_id) if status == JobStatus.succeeded.value else None,
            error=error,
            created_at=int(record["created_at"]) if "created_at" in record else None,
            completed_at=int(record["completed_at"]) if "completed_at" in record else None,
            timings=timings,
            webhook=WebhookState(status=record["webhook_status"], attempts=int(record.get("webhook_attempts", 0)),
                                 last_error=record.get("webhook_last_error") or None) if "webhook_status" in record else None,
            timestamps_url=self._links.timestamps(job_id) if "timestamps_key" in record else None,
            captions_url=self._links.captions(job_id) if "timestamps_key" in record else None,
            timestamps_unavailable=record.get("timestamps_unavailable"),
        )
