"""Workers wait out Redis and storage outages: the retrying proxy and the health it reports."""

from __future__ import annotations

import random

import pytest

from voicenote.errors import AudioNotFound, JobStoreError, PublishError, StorageError
from voicenote.retry import DependencyHealth, Retrying, backoff_delay


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens() -> None:
    assert [backoff_delay(n, base=0.5, cap=3, jitter=0) for n in (1, 2, 3, 4, 50)] == [0.5, 1.0, 2.0, 3, 3]
    rng = random.Random(7)
    assert all(0.8 <= backoff_delay(1, base=1, cap=1, jitter=0.2, rng=rng) <= 1 for _ in range(100))
    with pytest.raises(ValueError):
        backoff_delay(0, base=1, cap=1)


class Flaky:
    """Fails ``failures`` times with ``error``, then answers; counts the calls."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.name = "flaky"

    async def get(self, key: str) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return f"value of {key}"

    def job_key(self, job_id: str) -> str:
        return f"job:{job_id}"


async def test_retries_until_the_dependency_answers_and_reports_health_meanwhile() -> None:
    health = DependencyHealth(clock=lambda: 10.0)
    slept: list[float] = []
    seen_while_waiting: list[dict] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        seen_while_waiting.append(health.report())

    inner = Flaky(3, JobStoreError("connection refused"))
    proxy = Retrying(inner, health=health, base=0.1, cap=0.3, sleep=sleep, rng=random.Random(0))
    assert await proxy.get("a") == "value of a"
    assert inner.calls == 4 and len(slept) == 3 and max(slept) <= 0.3
    assert seen_while_waiting[0] == {"ready": False, "waiting_on": {"redis": {"seconds": 0.0, "error": "connection refused"}}}
    assert health.ready and health.report() == {"ready": True, "waiting_on": {}}
    assert proxy.job_key("x") == "job:x" and proxy.name == "flaky"  # synchronous members pass through


@pytest.mark.parametrize("error", [AudioNotFound("k"), PublishError("broker"), ValueError("bad")])
async def test_errors_that_are_not_an_outage_pass_through_at_once(error: Exception) -> None:
    inner = Flaky(1, error)
    proxy = Retrying(inner, health=DependencyHealth(), sleep=lambda s: pytest.fail("must not wait"))
    with pytest.raises(type(error)):
        await proxy.get("a")
    assert inner.calls == 1


async def test_storage_outage_is_reported_under_storage() -> None:
    health = DependencyHealth()
    states: list[bool] = []

    async def sleep(_: float) -> None:
        states.append("storage" in health.waiting)

    assert await Retrying(Flaky(2, StorageError("503 Slow Down")), health=health, sleep=sleep).get("k") == "value of k"
    assert states == [True, True] and health.ready
