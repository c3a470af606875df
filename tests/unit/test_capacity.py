from __future__ import annotations

import pytest

from ops.capacity import per_gpu_rpm, plan


def test_the_original_estimate_does_not_multiply_out() -> None:
    # 45 requests/min per A10G at full utilization needs ~223 GPUs for 10,000/min, not 12-15.
    assert plan(10_000, 45, utilization=1.0).gpus_at_peak == 223


def test_headroom_and_warm_pool() -> None:
    fleet = plan(10_000, 500, utilization=0.8, warm=1, on_demand_hourly=1.0, spot_hourly=0.5)
    assert fleet.gpus_at_peak == 25  # ceil(10000 / 400)
    assert fleet.spot_gpus_at_peak == 24
    assert fleet.cost_per_hour_at_peak == 13.0
    assert plan(0, 500).gpus_at_peak == 1  # the warm GPU stays


def test_per_gpu_rate_from_real_time_throughput() -> None:
    # 40 s of audio per wall second, 5 s notes -> 8 notes/s -> 480/min.
    assert per_gpu_rpm(40.0, 5.0) == pytest.approx(480.0)
    with pytest.raises(ValueError):
        per_gpu_rpm(0, 5)
