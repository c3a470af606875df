"""Benchmark of the completion side: what the result cache saves, what storage costs, how fast webhooks go.

    PYTHONPATH=. python -m ops.bench.completion [--jobs 16] [--deliveries 200]

1. Result cache: the same requests answered by the CPU voice (miss: engine, batch of one) and again from
   the cache (hit: Redis lookup + copy of the stored audio), through the real Synthesizer and Storer.
2. Storage: the storage step (Storer.complete) for 10 s of speech, local files vs moto's S3 server, and
   a single PUT vs multipart for 24 MiB.
3. Webhooks: completions/s through the dispatcher (Tansu broker, Redis, loopback receiver answering 204).

Figures are ratios within this run; absolute numbers depend on the machine (written alongside).
Writes results/bench_completion-<time>.json. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from ops.bench.common import machine
from ops.services import MotoS3, RedisServer, TansuBroker
from schemas.clock import now_ms
from schemas.codec import Codecs
from schemas.events import JobCompletion, SynthesisRequest, SynthesisResult
from schemas.topics import build_catalog
from stream_workers.completion.storage import Storer
from stream_workers.runtime.result_cache import ResultCache
from stream_workers.synthesis.synthesizer import Synthesizer
from voicenote.audio import to_wav
from voicenote.jobstore import JobStore
from voicenote.kafka import AsyncProducer, ensure_topics
from voicenote.settings import (
    KafkaSettings,
    RedisSettings,
    Settings,
    StorageBackend,
    StorageSettings,
    SynthesisSettings,
    WebhookSettings,
)
from voicenote.storage.local import LocalAudioStore
from voicenote.storage.s3 import S3AudioStore

TEXTS = [
    "Your parcel left our warehouse this morning and should arrive by Thursday.",
    "Reminder: your dentist appointment is tomorrow at half past nine.",
    "Your table for four is confirmed for Friday at eight in the evening.",
    "The invoice for October is ready; the total is one hundred and twelve euros.",
    "Your flight to Lisbon boards at gate twelve in forty minutes.",
    "Good news, your prescription is ready to collect at the pharmacy.",
    "Your password was changed. If this was not you, call us right away.",
    "The meeting moved to three o'clock in the small conference room.",
]


def _request(job_id: str, text: str) -> SynthesisRequest:
    return SynthesisRequest(job_id=job_id, created_at=now_ms(), text=text)


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(1000 * statistics.median(ordered), 2), "mean_ms": round(1000 * statistics.fmean(ordered), 2),
            "max_ms": round(1000 * ordered[-1], 2), "n": len(ordered)}


async def bench_cache(redis_url: str, jobs: int) -> dict[str, Any]:
    from stream_workers.engine.piper_engine import PiperEngine

    engine = PiperEngine.joe(threads=2)
    codecs = Codecs()
    prefix = f"bench{uuid.uuid4().hex[:6]}:"
    cache = ResultCache.from_url(redis_url, prefix, 3600)
    with tempfile.TemporaryDirectory() as tmp:
        storage = StorageSettings(local_dir=Path(tmp))
        store = LocalAudioStore(Path(tmp))
        synth = Synthesizer(engine, codecs, store, storage, SynthesisSettings(), cache=cache)
        storer = Storer(store, storage, public_base_url="http://api", cache=cache)

        async def one(job_id: str, text: str) -> tuple[float, bool]:
            started = time.perf_counter()
            admission = await synth.admit([codecs.request.encode_event(_request(job_id, text))])
            if admission.jobs:
                [(_, job)] = admission.jobs
                await asyncio.get_running_loop().run_in_executor(None, synth.run_batch, job.segments())
                record = await synth.finish(job)
            else:
                [(_, record)] = admission.results
            result = codecs.result.decode_event(codecs.result.encode_event(record))
            done = await storer.complete(result)
            assert done.status == "succeeded", done
            return time.perf_counter() - started, done.cache_hit

        await one("job_warmup", "Warm up.")
        misses, hits = [], []
        for i in range(jobs):
            elapsed, hit = await one(f"job_m{i}", TEXTS[i % len(TEXTS)] + f" Reference {i}.")
            assert not hit
            misses.append(elapsed)
        for i in range(jobs):
            elapsed, hit = await one(f"job_h{i}", TEXTS[i % len(TEXTS)] + f" Reference {i}.")
            assert hit
            hits.append(elapsed)
    await cache.close()
    miss, hit_ms = _ms(misses), _ms(hits)
    return {"engine": f"{engine.name} {engine.model_version}", "miss": miss, "hit": hit_ms,
            "miss_over_hit_p50": round(miss["p50_ms"] / hit_ms["p50_ms"], 1), "hit_ratio_seen": cache.hit_ratio,
            "meaning": "per request, engine + storage (miss) vs cache lookup + copy (hit)"}


async def bench_storage(s3_endpoint: str) -> dict[str, Any]:
    ten_seconds = to_wav((0.2 * np.sin(np.arange(22050 * 10) * 2 * np.pi * 440 / 22050)).astype(np.float32), 22050)
    out: dict[str, Any] = {"audio_bytes": len(ten_seconds)}
    with tempfile.TemporaryDirectory() as tmp:
        local = StorageSettings(local_dir=Path(tmp))
        s3_settings = StorageSettings(backend=StorageBackend.s3, s3_bucket=f"bench{uuid.uuid4().hex[:8]}", s3_endpoint_url=s3_endpoint,
                                      s3_access_key_id="testing", s3_secret_access_key="testing",  # type: ignore[arg-type]
                                      multipart_threshold_bytes=16 * 1_048_576, multipart_part_bytes=8 * 1_048_576)
        s3 = S3AudioStore(s3_settings)
        await s3.provision()
        for name, store, settings in (("local", LocalAudioStore(Path(tmp)), local), ("s3_moto", s3, s3_settings)):
            storer = Storer(store, settings, public_base_url="http://api")  # type: ignore[arg-type]
            times = []
            for i in range(30):
                result = SynthesisResult(job_id=f"job_st{i}", status="succeeded", created_at=0, synthesized_at=0, format="wav",
                                         audio=ten_seconds, engine="bench", model_version="1")
                started = time.perf_counter()
                await storer.complete(result)
                times.append(time.perf_counter() - started)
            out[name] = _ms(times)
        out["s3_over_local_p50"] = round(out["s3_moto"]["p50_ms"] / out["local"]["p50_ms"], 1)
        big = os.urandom(24 * 1_048_576)
        single = S3AudioStore(s3_settings.model_copy(update={"multipart_threshold_bytes": 64 * 1_048_576}))
        for name, store in (("single_put_24MiB", single), ("multipart_24MiB", s3)):
            times = []
            for i in range(3):
                started = time.perf_counter()
                await store.put(f"audio/bb/job_big{i}.wav", big, "audio/wav")
                times.append(time.perf_counter() - started)
            out[name] = _ms(times)
        out["multipart_over_single_p50"] = round(out["multipart_24MiB"]["p50_ms"] / out["single_put_24MiB"]["p50_ms"], 2)
        await single.close()
        await s3.close()
    return out


async def bench_webhooks(bootstrap: str, redis_url: str, deliveries: int) -> dict[str, Any]:
    from stream_workers.webhooks.dispatcher import WebhookDispatcher
    from stream_workers.webhooks.worker import build_sender

    received = 0

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            nonlocal received
            self.rfile.read(int(self.headers["content-length"]))
            received += 1
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    unique = f"bench{uuid.uuid4().hex[:6]}"
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"{unique}.", partitions=4, request_partitions=4,
                                            session_timeout_ms=2000, heartbeat_interval_ms=500),
                        redis=RedisSettings(url=redis_url, key_prefix=f"{unique}:"),
                        webhooks=WebhookSettings(signing_secret="whsec_" + base64.b64encode(os.urandom(32)).decode(),  # type: ignore[arg-type]
                                                 allow_hosts=["127.0.0.1"]),
                        worker={"group_id": unique})  # type: ignore[arg-type]
    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=4, partitions=4)
    ensure_topics(settings.kafka, catalog.all())
    codecs, jobs, producer, sender = Codecs(), JobStore.from_settings(settings.redis), AsyncProducer(settings.kafka), build_sender(settings)
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    now = now_ms()
    await asyncio.gather(*(producer.send(catalog.completions.name, codecs.completion.encode_event(
        JobCompletion(job_id=f"job_wh{i}", status="succeeded", created_at=now, completed_at=now, webhook_url=url)),
        key=f"job_wh{i}".encode()) for i in range(deliveries)))
    stop = asyncio.Event()
    dispatcher = WebhookDispatcher(settings, catalog, codecs, jobs, sender, producer)
    task = asyncio.create_task(dispatcher.run(stop))
    while received == 0:
        await asyncio.sleep(0.01)
    started, first = time.perf_counter(), received
    while received < deliveries:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    producer.close()
    await sender.close()
    await jobs.close()
    server.shutdown()
    return {"deliveries": deliveries - first, "seconds": round(elapsed, 2), "per_second": round((deliveries - first) / elapsed, 1),
            "note": "one dispatcher process (one attempt in flight per partition, 4 partitions), receiver on loopback answering 204"}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    broker = TansuBroker().start()
    redis = RedisServer().start()
    s3 = MotoS3().start()
    try:
        return {
            "benchmark": "completion side",
            "machine": {**machine(), "note": "Tansu, Redis, moto's S3 server, the receiver and this process share the machine, "
                                             "with other engineers' test runs alongside"},
            "result_cache": await bench_cache(redis.url, args.jobs),
            "storage": await bench_storage(s3.endpoint_url),
            "webhooks": await bench_webhooks(broker.bootstrap, redis.url, args.deliveries),
        }
    finally:
        s3.stop()
        redis.stop()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--deliveries", type=int, default=200)
    args = parser.parse_args()
    figures = asyncio.run(main_async(args))
    out = Path("results") / f"bench_completion-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "machine"}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
