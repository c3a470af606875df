"""The idle fetch wait (stream_workers/runtime/fetch_wait.py): short while records flow, long after a quiet spell."""

from __future__ import annotations

import pytest

from stream_workers.runtime.fetch_wait import FetchWaitPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_wait_stays_short_until_the_consumer_has_been_idle_long_enough() -> None:
    clock = Clock()
    policy = FetchWaitPolicy(100, 2000, 10.0, clock=clock)
    assert policy.observe(False) == 100
    clock.now += 9.9
    assert policy.observe(False) == 100 and not policy.idle
    clock.now += 0.2
    assert policy.observe(False) == 2000 and policy.idle


def test_records_bring_the_short_wait_back_at_once_and_restart_the_quiet_spell() -> None:
    clock = Clock()
    policy = FetchWaitPolicy(100, 2000, 10.0, clock=clock)
    clock.now += 60
    assert policy.observe(False) == 2000
    assert policy.observe(True) == 100
    clock.now += 5
    assert policy.observe(False) == 100
    clock.now += 5
    assert policy.observe(False) == 2000


def test_without_an_idle_wait_the_wait_never_changes() -> None:
    clock = Clock()
    policy = FetchWaitPolicy(100, None, 10.0, clock=clock)
    clock.now += 3600
    assert policy.observe(False) == 100 and policy.idle  # idle all the same (the progress reader rests on it)


def test_an_idle_wait_shorter_than_the_busy_one_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be shorter"):
        FetchWaitPolicy(500, 100, 10.0)
