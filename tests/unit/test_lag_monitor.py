"""The API's lag sampling (producer_api/estimate.py LagMonitor): every period while anything moves, rarely while idle."""

from __future__ import annotations

import asyncio

from producer_api.estimate import LagMonitor, ThroughputEstimator


class Reader:
    group = "voicenote-synthesis"

    def __init__(self, lag: int = 0) -> None:
        self.calls = 0
        self.lag = lag

    def sample(self, topic: str, partitions: int) -> tuple[int, int]:
        self.calls += 1
        return 100, self.lag

    def close(self) -> None:
        pass


async def _run_for(monitor: LagMonitor, seconds: float) -> None:
    monitor.start()
    await asyncio.sleep(seconds)


async def test_an_idle_group_is_sampled_at_the_idle_period_and_a_request_asking_wakes_it() -> None:
    reader, estimator = Reader(), ThroughputEstimator(1.0)
    monitor = LagMonitor(reader, "t", 4, estimator, period=0.02, idle_period=5.0)  # type: ignore[arg-type]
    try:
        await _run_for(monitor, 0.4)
        assert reader.calls == 2  # a first sample, a second that found nothing moved: then the idle period
        estimator.estimate_seconds()  # a submission asks
        await asyncio.sleep(0.1)
        assert reader.calls == 3
    finally:
        await monitor.stop()


async def test_lag_keeps_the_short_period() -> None:
    reader = Reader(lag=7)
    monitor = LagMonitor(reader, "t", 4, ThroughputEstimator(1.0), period=0.02, idle_period=5.0)  # type: ignore[arg-type]
    try:
        await _run_for(monitor, 0.4)
        assert reader.calls >= 8
    finally:
        await monitor.stop()


async def test_without_an_idle_period_the_period_never_changes() -> None:
    reader = Reader()
    monitor = LagMonitor(reader, "t", 4, ThroughputEstimator(1.0), period=0.02)  # type: ignore[arg-type]
    try:
        await _run_for(monitor, 0.4)
        assert reader.calls >= 8
    finally:
        await monitor.stop()
