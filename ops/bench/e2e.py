"""Real voice end to end: HTTP in, completion event out, at several offered loads.

Starts the embedded broker (Tansu), Redis, the API and both workers with the Piper voice, offers
open-loop load on ``POST /v1/audio/speech/async`` at each rate, and measures achieved throughput,
latency from the POST to the completion event (p50/p90/p99), and the synthesis worker's mean batch
size (from its /metrics). Writes results/bench_e2e.json with the machine.

    python -m ops.bench.e2e [--rates 1,3,6,12] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from ops.bench.common import machine, pct, stack_settings, start_api_stack, stop_processes
from ops.bench.pipeline import Watcher
from ops.embedded import wait_ready
from ops.services import RedisServer, TansuBroker, free_port
from schemas.codec import Codecs

NOTES = [
    "Your order has shipped and will arrive on Thursday.",
    "Please call the front desk when you get a moment.",
    "The meeting moved to three o'clock in room twelve.",
    "Remember to pick up milk and bread on the way home.",
]


def batch_totals(metrics_url: str) -> tuple[float, float]:
    """(sum, count) of the synthesis worker's batch-size histogram."""
    total = count = 0.0
    for line in httpx.get(metrics_url, timeout=5).text.splitlines():
        if line.startswith("voicenote_synthesis_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("voicenote_synthesis_batch_size_count"):
            count = float(line.split()[-1])
    return total, count


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="1,3,6,12", help="offered requests/s, one run each")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    parser.add_argument("--out", default="results/bench_e2e.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vn-e2e-"))
    broker = TansuBroker(log_path=tmp / "tansu.log").start()
    redis = RedisServer().start()
    tag = "e" + uuid.uuid4().hex[:8]
    settings = stack_settings(tag, broker.bootstrap, redis.url, tmp)
    api_port, synth_port = free_port(), free_port()
    procs = start_api_stack(settings, tmp, api_port=api_port, synth_port=synth_port)
    base = f"http://127.0.0.1:{api_port}"
    catalog = settings.kafka.catalog()
    completions = Watcher(settings, catalog.completions.name, Codecs().completion.decode)
    completions.start()
    runs: list[dict[str, Any]] = []
    client = httpx.Client(timeout=30)
    try:
        wait_ready(f"{base}/readyz", procs, 120, logs=str(tmp))
        warm = client.post(f"{base}/v1/audio/speech/async", json={"input": "Warming up."}).json()["job_id"]
        completions.wait([warm], 120)

        for rate in (float(r) for r in args.rates.split(",")):
            posted: dict[str, float] = {}
            lock = threading.Lock()
            before = batch_totals(f"http://127.0.0.1:{synth_port}/metrics")

            def post(i: int, posted: dict[str, float] = posted, lock: threading.Lock = lock) -> None:
                t0 = time.time()
                resp = httpx.post(f"{base}/v1/audio/speech/async", json={"input": NOTES[i % len(NOTES)], "use_cache": False}, timeout=30)
                resp.raise_for_status()
                with lock:
                    posted[resp.json()["job_id"]] = t0

            threads = []
            started = time.time()
            n = int(rate * args.seconds)
            for i in range(n):  # open loop: requests go out on schedule whatever the service does
                delay = started + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                t = threading.Thread(target=post, args=(i,))
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
            ids = list(posted)
            completions.wait(ids, 900)
            after = batch_totals(f"http://127.0.0.1:{synth_port}/metrics")
            latencies = [1000 * (completions.seen[j] - posted[j]) for j in ids]
            last = max(completions.seen[j] for j in ids)
            batches = after[1] - before[1]
            runs.append({"offered_per_s": rate, "jobs": len(ids), "achieved_per_s": round(len(ids) / (last - started), 2),
                         "latency_ms": {"p50": round(pct(latencies, 50)), "p90": round(pct(latencies, 90)), "p99": round(pct(latencies, 99))},
                         "mean_batch_size": round((after[0] - before[0]) / batches, 2) if batches else None})
            print(json.dumps(runs[-1]))
    finally:
        completions.stop()
        stop_processes(procs.values())
        redis.stop()
        broker.stop()
    figures = {"benchmark": "real voice (Piper joe, CPU sessions) end to end, HTTP POST to completion event",
               "machine": machine(), "settings": {"max_batch": settings.worker.max_batch, "window_ms": settings.worker.window_seconds * 1000,
                                                  "engine_threads": settings.engine.threads},
               "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
