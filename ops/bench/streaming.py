"""Streaming speech: time to the first audio byte against the whole job, over HTTP, with the real voice.

Starts the embedded broker (Tansu), Redis, the API and both workers with the Piper voice, then for a
1,000-character note:

- **the official ``openai`` client, as its users call it**: ``client.audio.speech.with_streaming_response.create(
  model="tts-1", voice="alloy", input=<note>)`` and ``iter_bytes()``, with no other parameter (so no
  ``stream_format``: the server's default, which streams as OpenAI's does; mp3, OpenAI's default format). Each
  run's note differs in its first words, so no earlier run's cached result answers it;
- per format, a streamed request (``stream_format: "audio"``) and a buffered whole-file request of the same text
  (``stream_format: "none"``), each with ``use_cache: false``.

Streamed and whole-file requests alternate, so both see the same machine load. Measured:

- time to first byte (TTFB): from sending the POST to the first non-empty chunk of the body;
- total: from sending the POST to the last byte (streamed), or to the answer (whole file).

Reports p50 over the runs and the ratios TTFB / whole-file total and TTFB / the stream's own last byte, and
writes results/bench_streaming.json with the machine.

    python -m ops.bench.streaming [--runs 5] [--formats pcm,mp3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from openai import OpenAI

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


def _read_timed(t0: float, chunks_in: Iterable[bytes], headers: Any) -> tuple[float, float, int, int, str]:
    """(seconds to first byte, seconds to last byte, bytes, chunks, streamed header) of one answer."""
    first = 0.0
    size = chunks = 0
    for chunk in chunks_in:
        if chunk:
            if not chunks:
                first = time.perf_counter() - t0
            chunks += 1
            size += len(chunk)
    return first, time.perf_counter() - t0, size, chunks, headers.get("x-voicenote-streamed", "")


def timed(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, float, int, int, str]:
    """The figures of one POST (see _read_timed)."""
    t0 = time.perf_counter()
    with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        return _read_timed(t0, response.iter_raw(), response.headers)


def timed_openai(client: OpenAI, text: str) -> tuple[float, float, int, int, str]:
    """The same figures for the official client, called with OpenAI's parameters only (no stream_format)."""
    t0 = time.perf_counter()
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=text) as response:
        return _read_timed(t0, response.iter_bytes(), response.headers)


def unique_note(chars: int, run: int, tag: str) -> str:
    """A note of ``chars`` characters whose first words are this run's own: no cached result answers it."""
    head = f"Note {run} of {tag}."
    return f"{head} {note(chars - len(head) - 1)}"


def summary(streamed: list[tuple[float, float, int, int, str]], whole: list[tuple[float, float, int, int, str]],
            runs: int) -> dict[str, Any]:
    ttfb = [s[0] for s in streamed]
    total = [s[1] for s in streamed]
    whole_total = [w[1] for w in whole]
    return {
        "runs": runs,
        "ttfb_s": {"p50": round(pct(ttfb, 50), 3), "min": round(min(ttfb), 3), "max": round(max(ttfb), 3)},
        "streamed_total_s": {"p50": round(pct(total, 50), 3)},
        "whole_file_s": {"p50": round(pct(whole_total, 50), 3), "min": round(min(whole_total), 3)},
        "ttfb_over_whole_file_p50": round(pct(ttfb, 50) / pct(whole_total, 50), 3),
        "ttfb_over_own_last_byte_p50": round(pct([s[0] / s[1] for s in streamed], 50), 3),
        "chunks_p50": pct([float(s[3]) for s in streamed], 50),
        "bytes_p50": pct([float(s[2]) for s in streamed], 50),
    }


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
        from openai import OpenAI  # the test extra (`make install`): the client is what this measures

        official = OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=300, max_retries=0)
        try:
            streamed: list[tuple[float, float, int, int, str]] = []
            whole: list[tuple[float, float, int, int, str]] = []
            for run in range(args.runs):
                text_run = unique_note(args.chars, run, tag)
                streamed.append(timed_openai(official, text_run))
                # The reference: the same kind of request (mp3, fresh synthesis), answered whole.
                whole.append(timed(client, url, {"input": text, "response_format": "mp3", "use_cache": False,
                                                 "stream_format": "none"}))
                print("openai client (no stream_format)", [round(v, 3) for v in streamed[-1][:2]], "whole",
                      round(whole[-1][1], 3), flush=True)
            assert all(s[4] == "true" for s in streamed), "the openai client's default request was not streamed"
            results["openai_client_default"] = {"format": "mp3", "chars": len(text_run), **summary(streamed, whole, args.runs)}
            print(json.dumps({"openai_client_default": results["openai_client_default"]}), flush=True)
        finally:
            official.close()
        for fmt in args.formats.split(","):
            streamed, whole = [], []
            for _ in range(args.runs):
                body = {"input": text, "response_format": fmt, "use_cache": False}
                streamed.append(timed(client, url, {**body, "stream_format": "audio"}))
                whole.append(timed(client, url, {**body, "stream_format": "none"}))
                print(fmt, "streamed", [round(v, 3) for v in streamed[-1][:2]], "whole", round(whole[-1][1], 3), flush=True)
            assert all(s[4] == "true" for s in streamed), "a streamed answer fell back to the whole file"
            assert all(w[4] == "false" and w[3] >= 1 for w in whole), "a whole-file answer was streamed"
            results[fmt] = summary(streamed, whole, args.runs)
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
