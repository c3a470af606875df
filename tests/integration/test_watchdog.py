"""The watchdog ends a job stuck past the limit as failed (stuck_timeout), once, and leaves the rest alone."""

from __future__ import annotations

import time
from typing import Any

import pytest

from schemas.events import JobCompletion, SynthesisRequest
from stream_workers.completion import StatusProjector
from stream_workers.watchdog import STUCK_CODE, Watchdog
from voicenote.jobstore import JobStore

pytestmark = pytest.mark.integration


def _request(job_id: str, created_at: int) -> SynthesisRequest:
    return SynthesisRequest(job_id=job_id, created_at=created_at, text="hello", format="wav", voice="joe", priority="batch",
                            webhook_url="https://hooks.example/in", batch_id=None)


async def test_stuck_job_is_failed_once_and_finished_or_young_jobs_are_left(jobs: JobStore) -> None:
    projector = StatusProjector(jobs)
    now = int(time.time() * 1000)
    hours_ago = now - 3 * 3600 * 1000
    await projector.on_requests([_request("job_wd_stuck", hours_ago), _request("job_wd_done", hours_ago),
                                 _request("job_wd_young", now)])
    await projector.on_completions([JobCompletion(job_id="job_wd_done", status="succeeded", created_at=hours_ago,
                                                  completed_at=now)])
    emitted: list[JobCompletion] = []

    async def emit(records: Any) -> None:
        emitted.extend(records)

    watchdog = Watchdog(jobs, projector, emit, stuck_after=3600)
    assert await watchdog.sweep() == ["job_wd_stuck"]
    [event] = emitted
    assert (event.job_id, event.status, event.error_code) == ("job_wd_stuck", "failed", STUCK_CODE)
    assert event.created_at == hours_ago and event.webhook_url == "https://hooks.example/in"
    record = await jobs.get("job_wd_stuck")
    assert record is not None and (record["status"], record["error_code"]) == ("failed", STUCK_CODE)
    assert await projector.already_completed(["job_wd_stuck"]) == {"job_wd_stuck"}  # a late result is dropped

    assert await watchdog.sweep() == [] and len(emitted) == 1  # once
    assert await jobs.pending_before(now + 1, 10) == ["job_wd_young"]  # only the young one is still watched
    assert (await jobs.get("job_wd_young") or {})["status"] == "queued"
