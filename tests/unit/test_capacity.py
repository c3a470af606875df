from __future__ import annotations

import json

import pytest

from ops.bench.capacity import load_rate, measured_rate, per_gpu_rpm, plan, plan_from_results


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


def _report(static, continuous=None):
    r = {"device": "cuda", "device_name": "test", "static": {"results": static}}
    if continuous is not None:
        r["continuous"] = {"saturated": continuous}
    return r


def test_rate_comes_from_the_results_file(tmp_path) -> None:
    static = [{"batch_size": 1, "audio_s_per_s": 10.0}, {"batch_size": 8, "audio_s_per_s": 60.0},
              {"batch_size": 16, "error": "out of memory"}]
    rate = measured_rate(_report(static))
    assert rate.audio_s_per_s == 60.0 and "static batch 8" in rate.source
    rate = measured_rate(_report(static, {"audio_s_per_s": 48.0}))
    assert rate.audio_s_per_s == 48.0 and "continuous" in rate.source
    per_placement = _report(static) | {"continuous": {"thread": {"saturated": {"audio_s_per_s": 41.0}},
                                                       "process": {"saturated": {"audio_s_per_s": 44.0}}}}
    rate = measured_rate(per_placement)  # one run per codec placement: the better one
    assert rate.audio_s_per_s == 44.0 and "continuous.process.saturated" in rate.source
    f = tmp_path / "s1mini_cuda.json"
    f.write_text(json.dumps(_report(static, {"audio_s_per_s": 40.0})))
    assert load_rate(f).audio_s_per_s == 40.0
    fleet, used = plan_from_results(10_000, 5.0, f, utilization=1.0)
    assert used.audio_s_per_s == 40.0 and fleet.per_gpu_rpm == pytest.approx(480.0)
    assert fleet.gpus_at_peak == 21  # ceil(10000 / 480)


def test_a_results_file_without_figures_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError):
        measured_rate(_report([{"batch_size": 1, "error": "out of memory"}]))
    with pytest.raises(FileNotFoundError):
        load_rate(tmp_path / "missing.json")
