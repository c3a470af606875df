"""The watchdog ends a job stuck past the limit as failed (stuck_timeout), once, and leaves the rest alone."""

from __future__ import annotations

import time
from typing import Any

import pytest

from schemas.events import JobCompletion, SynthesisRequest
from stream_workers.completion.status import StatusProjector
from stream_workers.completion.watchdog import DATA_LOST_CODE, STUCK_CODE, LostRequests, Watchdog
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


async def test_invalid_ids_in_the_pending_index_are_dropped_never_ended(jobs: JobStore) -> None:
    # Issue 25, defect 5: an index entry left by a dead-lettered request (before the fix) once became a
    # stuck_timeout completion under the id "../x y". Such entries are dropped; valid stuck jobs still end.
    projector = StatusProjector(jobs)
    hours_ago = int(time.time() * 1000) - 3 * 3600 * 1000
    await jobs.track_pending([("../x y", hours_ago), ("job_wd_nl\n", hours_ago), ("", hours_ago)])
    await projector.on_requests([_request("job_wd_valid", hours_ago)])
    emitted: list[JobCompletion] = []

    async def emit(records: Any) -> None:
        emitted.extend(records)

    watchdog = Watchdog(jobs, projector, emit, stuck_after=3600)
    assert await watchdog.sweep() == ["job_wd_valid"]
    assert [c.job_id for c in emitted] == ["job_wd_valid"]
    assert await jobs.pending_before(int(time.time() * 1000) + 1, 10) == []  # the invalid entries are gone too
    assert await jobs.get("../x y") is None


async def test_jobs_whose_requests_the_broker_lost_end_as_broker_data_lost_once_the_grace_is_over(jobs: JobStore) -> None:
    # Issue 22 item 5: after a memory:// broker restart, jobs whose requests vanished end failed with a clear code.
    projector = StatusProjector(jobs)
    now = int(time.time() * 1000)
    await projector.on_requests([_request("job_ls_gone", now - 5000), _request("job_ls_kept", now - 5000),
                                 _request("job_ls_done", now - 5000), _request("job_ls_later", now + 60_000)])
    await jobs.track_pending([("job_ls_api_only", now - 4000)])  # accepted by the API, never projected
    await projector.on_completions([JobCompletion(job_id="job_ls_done", status="succeeded", created_at=now - 5000,
                                                  completed_at=now)])
    emitted: list[JobCompletion] = []
    reads: list[int] = []

    async def emit(records: Any) -> None:
        emitted.extend(records)

    async def request_ids() -> set[str]:
        reads.append(1)
        return {"job_ls_kept"}  # published again after the restart (or held by its producer through it)

    clock = [now / 1000]
    lost = LostRequests(jobs, projector, emit, request_ids, grace=15, batch=2, clock=lambda: clock[0])
    assert await lost.sweep() == [] and reads == []  # nothing recorded: the topics are not even read

    await jobs.record_broker_data_loss(now)
    assert await lost.sweep() == [] and reads == []  # within the grace
    clock[0] += 16
    assert sorted(await lost.sweep()) == ["job_ls_api_only", "job_ls_gone"]
    assert {(c.job_id, c.status, c.error_code) for c in emitted} == {
        ("job_ls_gone", "failed", DATA_LOST_CODE), ("job_ls_api_only", "failed", DATA_LOST_CODE)}
    gone = next(c for c in emitted if c.job_id == "job_ls_gone")
    assert gone.webhook_url == "https://hooks.example/in" and "broker lost" in (gone.error_message or "")
    record = await jobs.get("job_ls_gone")
    assert record is not None and (record["status"], record["error_code"]) == ("failed", DATA_LOST_CODE)
    assert await projector.already_completed(["job_ls_gone"]) == {"job_ls_gone"}  # a late result is dropped
    assert (await jobs.get("job_ls_kept") or {})["status"] == "queued"  # its request is there: left to run
    # Handled once: the loss is forgotten; the kept job and the one created after the loss stay indexed.
    assert await jobs.broker_data_losses() == []
    assert await lost.sweep() == [] and len(emitted) == 2
    assert sorted(await jobs.pending_before(now + 120_000, 10)) == ["job_ls_kept", "job_ls_later"]
