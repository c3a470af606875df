"""Load generator for ``POST /v1/audio/speech/async``: accepted requests/s and p50/p99 latency by concurrency.

Starts a Tansu broker, uses the Redis on loopback (or starts one), provisions the topics, runs ONE API
process (uvicorn, as ``voicenote api`` runs it) with an API key, and keeps the workers off, so it
measures what the producer side can accept: auth, rate limit (Redis), Avro encoding, the acked Kafka
produce, and the queued record (Redis). The client is a minimal keep-alive HTTP/1.1 client on asyncio
(a general-purpose client would spend more CPU than the API on this 2-core machine).

    PYTHONPATH=. python -m ops.bench.api [--requests 6000] [--concurrency 1,8,32,64,128]

Writes results/bench_api-<time>.json with the machine's description. Not a test: figures vary by machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ops.bench import common
from ops.services import RedisServer, TansuBroker, free_port
from producer_api.auth import new_token
from schemas.topics import build_catalog
from voicenote.kafka import ensure_topics
from voicenote.settings import KafkaSettings

BODY = json.dumps({"model": "tts-1", "input": "Your parcel is on its way and will arrive tomorrow.", "voice": "alloy",
                   "response_format": "mp3"}).encode()


def machine() -> dict[str, object]:
    return common.machine(("fastapi", "uvicorn", "confluent-kafka", "redis", "uvloop", "httptools"),
                                "broker (Tansu), Redis, the API and this load generator share the machine")


async def _client(host: str, port: int, token: str, deadline_count: list[int], latencies: list[float], codes: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = (f"POST /v1/audio/speech/async HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    try:
        while deadline_count[0] > 0:
            deadline_count[0] -= 1
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            codes[status] = codes.get(status, 0) + 1
    finally:
        writer.close()


async def run_level(port: int, token: str, concurrency: int, requests: int) -> dict[str, object]:
    remaining, latencies, codes = [requests], [], {}  # type: ignore[var-annotated]
    started = time.perf_counter()
    await asyncio.gather(*(_client("127.0.0.1", port, token, remaining, latencies, codes) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": round(elapsed, 3),
            "accepted_per_second": round(codes.get(202, 0) / elapsed, 1), "status_counts": {str(k): v for k, v in codes.items()},
            "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2), "max_ms": round(latencies[-1] * 1000, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=6000, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32,64,128")
    parser.add_argument("--out", default="results")
    args = parser.parse_args()

    broker = TansuBroker(port=free_port(), log_path=Path("/tmp") / f"bench-tansu-{os.getpid()}.log").start()
    redis = RedisServer().start()
    prefix = f"bench{int(time.time())}."
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix)
    ensure_topics(kafka, build_catalog(prefix=prefix).all())
    token, digest = new_token()
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VOICENOTE_")},
           "VOICENOTE_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap, "VOICENOTE_KAFKA__TOPIC_PREFIX": prefix,
           "VOICENOTE_REDIS__URL": redis.url, "VOICENOTE_REDIS__KEY_PREFIX": prefix, "VOICENOTE_WORKER__GROUP_ID": prefix + "bench",
           "VOICENOTE_API__KEYS": json.dumps([{"name": "bench", "sha256": digest, "rate_per_second": 1e9, "burst": 1_000_000_000}]),
           "VOICENOTE_API__PORT": str(port), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    api = subprocess.Popen([sys.executable, "-m", "ops.cli", "api"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit("the API did not become ready")
        asyncio.run(run_level(port, token, 8, 500))  # warm-up: connections, schema, producer
        levels = []
        for c in (int(x) for x in args.concurrency.split(",")):
            result = asyncio.run(run_level(port, token, c, args.requests))
            print(json.dumps(result), flush=True)
            levels.append(result)
    finally:
        api.terminate()
        api.wait(15)
        redis.stop()
        broker.stop()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    path = out / f"bench_api-{time.strftime('%Y%m%dT%H%M%S')}.json"
    best = max(levels, key=lambda r: r["accepted_per_second"])  # type: ignore[arg-type, return-value]
    path.write_text(json.dumps({"benchmark": "POST /v1/audio/speech/async, workers off, one API process",
                                "goal": ">= 1000 accepted/s with p99 < 50 ms", "machine": machine(), "levels": levels,
                                "best": best}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
