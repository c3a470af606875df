"""The capacity model: measured throughput in, GPU counts and cost out.

The design card's original estimate (45 requests/min per A10G at batch 4; 12-15 GPUs for a peak of
10,000 requests/min) does not multiply out: 10,000 / 45 = 223 GPUs. This model makes the arithmetic
explicit so every benchmark figure can be turned into a fleet size and a bill.

The per-GPU rate is read from the measured S1-mini results file that ``make bench-s1mini`` (or
``python -m ops.bench.s1mini --device cuda``) writes, never from a constant:

    python -m ops.bench.capacity --results results/s1mini_cuda.json --peak-rpm 10000 --mean-audio-s 10
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_RESULTS = (Path("results/s1mini_cuda.json"), Path("results/s1mini_cpu.json"))


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


@dataclass(frozen=True)
class MeasuredRate:
    audio_s_per_s: float
    source: str  # which figure of which file
    device: str


def measured_rate(report: dict, source: str = "") -> MeasuredRate:
    """The sustained audio-s/s in an ops.bench.s1mini report: the saturated continuous run when there
    is one (mixed lengths, real admission), else the largest static batch bucket that ran."""
    dev = f"{report.get('device', '?')} ({report.get('device_name', '?')})"
    continuous = report.get("continuous") or {}
    # one run per codec placement ({"thread": {"saturated": ...}, ...}), or the older flat layout
    runs = {"": continuous} if "saturated" in continuous else continuous
    best = max(
        ((name, r["saturated"]) for name, r in runs.items() if (r.get("saturated") or {}).get("audio_s_per_s", 0) > 0),
        key=lambda nr: nr[1]["audio_s_per_s"], default=None,
    )
    if best is not None:
        where = f"continuous.{best[0]}.saturated" if best[0] else "continuous.saturated"
        return MeasuredRate(float(best[1]["audio_s_per_s"]), f"{source}: {where}", dev)
    static = [r for r in (report.get("static") or {}).get("results", []) if r.get("audio_s_per_s", 0) > 0]
    if not static:
        raise ValueError(f"{source or 'report'} has no measured audio_s_per_s (static or continuous)")
    top = max(static, key=lambda r: r["batch_size"])
    return MeasuredRate(float(top["audio_s_per_s"]), f"{source}: static batch {top['batch_size']}", dev)


def load_rate(path: str | Path | None = None) -> MeasuredRate:
    """The measured rate from ``path``, or from the first existing default results file (CUDA first)."""
    candidates = [Path(path)] if path else [p for p in DEFAULT_RESULTS if p.exists()]
    if not candidates or not candidates[0].exists():
        raise FileNotFoundError(f"no S1-mini results file ({path or ', '.join(map(str, DEFAULT_RESULTS))}); run make bench-s1mini")
    p = candidates[0]
    return measured_rate(json.loads(p.read_text()), str(p))


def plan_from_results(
    peak_rpm: float, mean_audio_seconds: float, path: str | Path | None = None, **kw
) -> tuple[FleetPlan, MeasuredRate]:
    rate = load_rate(path)
    return plan(peak_rpm, per_gpu_rpm(rate.audio_s_per_s, mean_audio_seconds), **kw), rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fleet size from a measured S1-mini results file")
    ap.add_argument("--results", default=None, help="results JSON (default: results/s1mini_cuda.json, else _cpu)")
    ap.add_argument("--peak-rpm", type=float, default=10_000)
    ap.add_argument("--mean-audio-s", type=float, default=10.0)
    ap.add_argument("--utilization", type=float, default=0.8)
    args = ap.parse_args(argv)
    fleet, rate = plan_from_results(args.peak_rpm, args.mean_audio_s, args.results, utilization=args.utilization)
    print(json.dumps({"rate": asdict(rate), "plan": fleet.as_dict()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
