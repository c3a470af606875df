"""The early check's decisions (issue 22, item 3): pure over the facts the topics give about an overdue job."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.events import JobCompletion, SynthesisResult
from stream_workers.completion.early_check import RESULT_LOST_CODE, EarlyCheck, Facts, Outcome, decide, overdue_after

NOW = 1_000_000.0
RESULT = SynthesisResult(job_id="job_a", status="succeeded", created_at=1, synthesized_at=2, audio=b"x")
COMPLETION = JobCompletion(job_id="job_a", status="succeeded", created_at=1, completed_at=3)


@pytest.mark.parametrize(("facts", "outcome"), [
    (Facts(completion=COMPLETION, result=RESULT, request_found=True, consumed=True), Outcome.reprojected),
    (Facts(result=RESULT, request_found=True, consumed=True), Outcome.reapplied),
    (Facts(result=RESULT), Outcome.reapplied),  # the result counts even when the request is gone
    (Facts(request_found=True, consumed=False), Outcome.waiting),
    (Facts(request_found=True, consumed=True), Outcome.failed),
    (Facts(), Outcome.request_missing),
])
def test_decide(facts: Facts, outcome: Outcome) -> None:
    assert decide(facts) is outcome


def test_overdue_after_is_the_estimate_times_the_factor_never_below_the_floor() -> None:
    assert overdue_after({"estimated_seconds": "60"}, 5, 120) == 300
    assert overdue_after({"estimated_seconds": "2.5"}, 5, 120) == 120
    assert overdue_after({}, 5, 120) == 120
    assert overdue_after({"estimated_seconds": "junk"}, 5, 120) == 120
    assert overdue_after(None, 5, 120) == 120


class FakeJobs:
    def __init__(self, records: dict[str, dict[str, str]]) -> None:
        self.records = records

    async def pending_before(self, before_ms: int, limit: int, start: int = 0) -> list[str]:
        return [j for j, r in self.records.items() if int(r["created_at"]) < before_ms][start:start + limit]

    async def get_fields_many(self, job_ids: list[str], fields: Any) -> list[dict[str, str] | None]:
        return [{k: v for k, v in self.records[j].items() if k in fields} for j in job_ids]


class FakeProjector:
    def __init__(self) -> None:
        self.projected: list[JobCompletion] = []

    async def on_completions(self, completions: list[JobCompletion]) -> list[bool]:
        self.projected += completions
        return [True] * len(completions)

    async def already_completed(self, job_ids: list[str]) -> set[str]:
        return set()


async def test_sweep_acts_on_each_overdue_job_and_skips_young_and_finished_ones() -> None:
    ms = int(NOW * 1000)
    queued = {"status": "queued", "format": "wav"}
    jobs = FakeJobs({
        "job_lag": {**queued, "created_at": str(ms - 200_000)},
        "job_lost": {**queued, "created_at": str(ms - 200_000), "webhook_url": "https://hooks.example/in"},
        "job_res": {**queued, "created_at": str(ms - 200_000)},
        "job_slow_estimate": {**queued, "created_at": str(ms - 200_000), "estimated_seconds": "100"},  # 500 s bound
        "job_young": {**queued, "created_at": str(ms - 10_000)},
        "job_done": {"status": "succeeded", "created_at": str(ms - 200_000), "completion_emitted_at": "1"},
    })
    result = SynthesisResult(job_id="job_res", status="succeeded", created_at=1, synthesized_at=2, audio=b"x")
    asked: list[list[str]] = []

    async def facts(job_ids: list[str]) -> dict[str, Facts]:
        asked.append(sorted(job_ids))
        return {"job_lag": Facts(request_found=True), "job_lost": Facts(request_found=True, consumed=True),
                "job_res": Facts(result=result, request_found=True, consumed=True)}

    emitted: list[JobCompletion] = []
    reapplied: list[SynthesisResult] = []

    async def emit(records: Any) -> None:
        emitted.extend(records)

    async def reapply(results: Any) -> None:
        reapplied.extend(results)

    projector = FakeProjector()
    check = EarlyCheck(jobs, projector, emit, facts, reapply, factor=5, floor=120, stuck_after=7200,  # type: ignore[arg-type]
                       clock=lambda: NOW)
    outcomes = await check.sweep()
    assert asked == [["job_lag", "job_lost", "job_res"]]
    assert outcomes == {"job_lag": Outcome.waiting, "job_lost": Outcome.failed, "job_res": Outcome.reapplied}
    assert reapplied == [result]
    [lost] = emitted
    assert (lost.job_id, lost.status, lost.error_code, lost.webhook_url) == ("job_lost", "failed", RESULT_LOST_CODE,
                                                                             "https://hooks.example/in")
    assert projector.projected == [lost]
    samples = {s.labels["outcome"]: s.value for m in check.metrics.registry.collect() for s in m.samples
               if s.name == "voicenote_jobs_overdue_total"}
    assert samples == {"waiting": 1, "failed": 1, "reapplied": 1}


async def test_a_completion_on_the_topic_is_projected_and_a_missing_request_is_only_reported() -> None:
    ms = int(NOW * 1000)
    jobs = FakeJobs({"job_a": {"status": "running", "created_at": str(ms - 300_000)},
                     "job_gone": {"status": "queued", "created_at": str(ms - 300_000)},
                     "job_old": {"status": "queued", "created_at": str(ms - 8000_000)}})  # the watchdog's

    async def facts(job_ids: list[str]) -> dict[str, Facts]:
        assert sorted(job_ids) == ["job_a", "job_gone"]
        return {"job_a": Facts(completion=COMPLETION, request_found=True, consumed=True)}

    async def never(records: Any) -> None:
        raise AssertionError("nothing to emit or reapply")

    projector = FakeProjector()
    check = EarlyCheck(jobs, projector, never, facts, never, factor=5, floor=120, stuck_after=7200,  # type: ignore[arg-type]
                       clock=lambda: NOW)
    assert await check.sweep() == {"job_a": Outcome.reprojected, "job_gone": Outcome.request_missing}
    assert projector.projected == [COMPLETION]
