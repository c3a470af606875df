"""The capacity model: measured throughput in, GPU counts and cost out.

The design card's original estimate (45 requests/min per A10G at batch 4; 12-15 GPUs for a peak of
10,000 requests/min) does not multiply out: 10,000 / 45 = 223 GPUs. This model makes the arithmetic
explicit so every benchmark figure can be turned into a fleet size and a bill.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FleetPlan:
    peak_rpm: float
    per_gpu_rpm: float
    utilization: float
    gpus_at_peak: int
    warm_gpus: int
    spot_gpus_at_peak: int
    cost_per_hour_at_peak: float
    cost_per_1000_requests: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def per_gpu_rpm(audio_seconds_per_wall_second: float, mean_audio_seconds_per_request: float) -> float:
    """Requests/min one GPU sustains, from an engine benchmark's real-time throughput."""
    if audio_seconds_per_wall_second <= 0 or mean_audio_seconds_per_request <= 0:
        raise ValueError("throughput and request length must be positive")
    return 60.0 * audio_seconds_per_wall_second / mean_audio_seconds_per_request


def plan(
    peak_rpm: float,
    per_gpu: float,
    *,
    utilization: float = 0.8,
    warm: int = 1,
    on_demand_hourly: float = 1.006,  # g5.xlarge on-demand, us-east-1
    spot_hourly: float = 0.40,  # typical g5.xlarge spot
) -> FleetPlan:
    """GPUs needed at ``peak_rpm`` when each sustains ``per_gpu`` requests/min at ``utilization``
    (headroom for bursts, batch windows and rebalances)."""
    if not 0 < utilization <= 1:
        raise ValueError("utilization must be in (0, 1]")
    if per_gpu <= 0:
        raise ValueError("per-GPU throughput must be positive")
    gpus = max(warm, math.ceil(peak_rpm / (per_gpu * utilization)))
    spot = gpus - warm
    hourly = warm * on_demand_hourly + spot * spot_hourly
    per_1000 = hourly / (peak_rpm * 60) * 1000 if peak_rpm > 0 else 0.0
    return FleetPlan(peak_rpm, per_gpu, utilization, gpus, warm, spot, round(hourly, 2), round(per_1000, 4))
