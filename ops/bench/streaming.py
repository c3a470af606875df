"""Streaming speech: time to the first audio byte against the whole job, over HTTP, with the real voice.

Starts the embedded broker (Tansu), Redis, the API and both workers with the Piper voice, then for a
1,000-character note alternates (so both see the same machine load) a streamed request
(``stream_format: "audio"``) and a whole-file request of the same text, each with ``use_cache: false``:

- time to first byte (TTFB): from sending the POST to the first non-empty chunk of the body;
- total: from sending the POST to the last byte (streamed), or to the answer (whole file).

Reports p50 over the runs per format and the ratio TTFB / whole-file total within this run, and writes
results/bench_streaming.json with the machine.

    python -m ops.bench.streaming [--runs 5] [--formats pcm,mp3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from ops.bench.common import machine, pct, stack_settings, start_api_stack, stop_processes
from ops.embedded import wait_ready
from ops.services import RedisServer, TansuBroker, free_port

SENTENCES = [
    "Good morning, this is your daily summary from the operations team.",
    "Overnight, the order service processed more requests than on any day last month.",
    "Two warehouses reported delays because of the storm, and deliveries in the north may arrive a day late.",
    "The new checkout page is live for ten percent of visitors, and its conversion rate looks promising so far.",
    "Please review the incident report from Tuesday before the meeting at eleven.",
    "The database migration is scheduled for Saturday night, with a maintenance window of two hours.",
    "Customer support answered nearly every ticket within the hour, which is a new record.",
    "Finally, remember that the quarterly planning documents are due at the end of next week.",
    "Thank you all for your hard work, and have a great day.",
]


def note(chars: int = 1000) -> str:
    text = ""
    i = 0
    while len(text) < chars:
        text = f"{text} {SENTENCES[i % len(SENTENCES)]}".strip()
        i += 1
    return text[:chars].rsplit(" ", 1)[0] + "."


def timed(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, float, int, int, str]:
    """(seconds to first byte, seconds to last byte, bytes, chunks, streamed header) of one POST."""
    t0 = time.perf_counter()
    first = 0.0
    size = chunks = 0
    with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            if chunk:
                if not chunks:
                    first = time.perf_counter() - t0
                chunks += 1
                size += len(chunk)
        streamed = response.headers.get("x-voicenote-streamed", "")
    return first, time.perf_counter() - t0, size, chunks, streamed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5, help="streamed and whole-file requests per format")
    parser.add_argument("--formats", default="pcm,mp3")
    parser.add_argument("--chars", type=int, default=1000)
    parser.add_argument("--out", default="results/bench_streaming.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vn-stream-"))
    broker = TansuBroker(log_path=tmp / "tansu.log").start()
    redis = RedisServer().start()
    tag = "s" + uuid.uuid4().hex[:8]
    settings = stack_settings(tag, broker.bootstrap, redis.url, tmp)
    api_port = free_port()
    procs = start_api_stack(settings, tmp, api_port=api_port, synth_port=free_port(), extra_env={"VOICENOTE_API__SYNC_TIMEOUT_SECONDS": "300"})
    base = f"http://127.0.0.1:{api_port}"
    text = note(args.chars)
    results: dict[str, Any] = {}
    client = httpx.Client(timeout=300)
    try:
        wait_ready(f"{base}/readyz", procs, 120, logs=str(tmp))
        url = f"{base}/v1/audio/speech"
        timed(client, url, {"input": "Warming up the voice.", "response_format": "pcm", "stream_format": "audio"})
        for fmt in args.formats.split(","):
            streamed: list[tuple[float, float, int, int, str]] = []
            whole: list[tuple[float, float, int, int, str]] = []
            for _ in range(args.runs):
                body = {"input": text, "response_format": fmt, "use_cache": False}
                streamed.append(timed(client, url, {**body, "stream_format": "audio"}))
                whole.append(timed(client, url, body))
                print(fmt, "streamed", [round(v, 3) for v in streamed[-1][:2]], "whole", round(whole[-1][1], 3), flush=True)
            assert all(s[4] == "true" for s in streamed), "a streamed answer fell back to the whole file"
            ttfb = [s[0] for s in streamed]
            total = [s[1] for s in streamed]
            whole_total = [w[1] for w in whole]
            results[fmt] = {
                "runs": args.runs,
                "ttfb_s": {"p50": round(pct(ttfb, 50), 3), "min": round(min(ttfb), 3), "max": round(max(ttfb), 3)},
                "streamed_total_s": {"p50": round(pct(total, 50), 3)},
                "whole_file_s": {"p50": round(pct(whole_total, 50), 3), "min": round(min(whole_total), 3)},
                "ttfb_over_whole_file_p50": round(pct(ttfb, 50) / pct(whole_total, 50), 3),
                "chunks_p50": pct([float(s[3]) for s in streamed], 50),
                "bytes_p50": pct([float(s[2]) for s in streamed], 50),
            }
            print(json.dumps({fmt: results[fmt]}), flush=True)
    finally:
        stop_processes(procs.values())
        redis.stop()
        broker.stop()
    figures = {"benchmark": "streaming speech: POST /v1/audio/speech, time to first byte vs the whole job (Piper, CPU)",
               "machine": machine(), "chars": len(text),
               "settings": {"max_segment_chars": settings.synthesis.max_segment_chars,
                            "stream_first_segment_chars": settings.synthesis.stream_first_segment_chars,
                            "max_batch": settings.worker.max_batch, "engine_threads": settings.engine.threads},
               "formats": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
