"""Engine throughput: seconds of audio per wall second at batch 1, 2, 4, 8, for each engine here.

Runs each engine's ``synthesize_batch`` on the same sentences and writes results/bench_engine.json
with the machine. Figures are compared as ratios to batch 1 of the same engine in the same run.

    python -m ops.bench.engine [--engines piper,null] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ops.bench.common import machine
from stream_workers.engine.base import SpeechEngine, SynthesisInput

SENTENCES = [
    "The quarterly report is ready for your review.",
    "Please call me back when you get a moment this afternoon.",
    "Your package will arrive on Thursday between nine and noon.",
    "Remember to bring the signed forms to the front desk.",
    "The meeting moved to the third floor conference room.",
    "Thanks for the update, I will look at it tomorrow morning.",
    "Traffic on the bridge is heavy, so leave a little early.",
    "Dinner is at seven, and the kids have already eaten.",
]


def build(name: str) -> list[tuple[str, SpeechEngine]]:
    if name == "piper":
        from stream_workers.engine.piper_engine import PiperBatchedEngine, PiperEngine

        batched = PiperBatchedEngine.joe(threads=2)
        return [("piper-sessions-2x1thread", PiperEngine.joe(threads=2, sessions=2)),
                ("piper-sequential-1x2thread", PiperEngine.joe(threads=2, sessions=1)),
                (f"piper-padded-batch-{batched.providers[0]}", batched)]
    if name == "null":
        from stream_workers.engine.null_engine import NullEngine

        return [("null", NullEngine())]
    raise SystemExit(f"unknown engine {name!r}")


def measure(engine: SpeechEngine, batch: int, rounds: int) -> dict[str, Any]:
    inputs = [SynthesisInput(job_id=f"b{i}", text=SENTENCES[i % len(SENTENCES)]) for i in range(batch)]
    engine.synthesize_batch(inputs[:1])  # warm-up
    audio = wall = 0.0
    for _ in range(rounds):
        for start in range(0, 8, batch):  # the same eight sentences each time, whatever the batch size
            chunk = [SynthesisInput(job_id=f"b{i}", text=SENTENCES[i]) for i in range(start, start + batch)]
            t0 = time.perf_counter()
            results = engine.synthesize_batch(chunk)
            wall += time.perf_counter() - t0
            audio += sum(len(r.audio) / r.sample_rate for r in results if r.ok and r.audio is not None)
    return {"batch": batch, "audio_seconds": round(audio, 2), "wall_seconds": round(wall, 3),
            "audio_seconds_per_wall_second": round(audio / wall, 3)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", default="piper,null")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="results/bench_engine.json")
    args = parser.parse_args()
    out: dict[str, Any] = {"benchmark": "engine audio seconds per wall second by batch size", "machine": machine(), "engines": {}}
    for name in args.engines.split(","):
        for label, engine in build(name):
            rows = [measure(engine, b, args.rounds) for b in (1, 2, 4, 8)]
            base = rows[0]["audio_seconds_per_wall_second"]
            for row in rows:
                row["vs_batch_1"] = round(row["audio_seconds_per_wall_second"] / base, 3)
            out["engines"][label] = {"model_version": engine.model_version, "rows": rows}
            print(label, json.dumps(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
