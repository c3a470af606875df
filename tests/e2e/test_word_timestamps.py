"""Word timestamps end to end (issue 23): asked for over HTTP, timed by the real Piper worker, stored beside the audio
by the completion worker, served by the API as JSON, WebVTT and SRT."""

from __future__ import annotations

import io
import json
import re
import wave

import httpx
import pytest

from tests.stack import Stack

pytestmark = pytest.mark.e2e

# Over 300 characters (the segment bound): two segments, so the second one's words must be offset right.
TEXT = ("Subtitles need to know when each word is spoken. This note is long enough to be cut into two segments, "
        "and the words of the second one must still line up with the audio. The service joins the segments with "
        "a short pause between them, and the timestamps account for it. That is the whole trick, really.")


def _clock(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def test_word_timestamps_and_captions_of_an_async_job(stack: Stack) -> None:
    stack.start_worker("synthesis")
    stack.start_worker("completion")
    stack.start_api()
    base = stack.base_url

    resp = httpx.post(f"{base}/v1/audio/speech/async", json={"input": TEXT, "response_format": "wav", "timestamps": "word"},
                      timeout=10)
    assert resp.status_code == 202, resp.text
    plain = httpx.post(f"{base}/v1/audio/speech/async", json={"input": "No timestamps here.", "response_format": "wav"},
                       timeout=10).json()["job_id"]
    job_id = resp.json()["job_id"]
    job = stack.wait_job(job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["timestamps_url"].endswith(f"/v1/jobs/{job_id}/timestamps")

    audio = httpx.get(job["audio_url"], timeout=10, follow_redirects=True)
    with wave.open(io.BytesIO(audio.content)) as w:
        duration = w.getnframes() / w.getframerate()

    body = httpx.get(job["timestamps_url"], timeout=10).json()
    words = body["words"]
    assert [w["word"] for w in words] == TEXT.split()
    for a, b in zip(words, words[1:], strict=False):
        assert a["start"] <= a["end"] <= b["start"] <= b["end"]
    assert words[0]["start"] < 0.4
    assert duration - 0.5 < words[-1]["end"] <= duration + 0.01
    assert all(w["end"] - w["start"] > 0.02 for w in words)

    vtt = httpx.get(f"{base}/v1/jobs/{job_id}/captions", params={"format": "vtt"}, timeout=10)
    assert vtt.status_code == 200 and vtt.headers["content-type"].startswith("text/vtt")
    assert vtt.text.startswith("WEBVTT\n\n")
    cues = re.findall(r"(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)\n(.+)\n", vtt.text)
    assert cues and " ".join(c[8] for c in cues) == TEXT
    times = [(_clock(*c[0:4]), _clock(*c[4:8])) for c in cues]
    assert all(s < e for s, e in times) and all(a[1] <= b[0] for a, b in zip(times, times[1:], strict=False))
    assert times[-1][1] <= duration + 0.01
    srt = httpx.get(f"{base}/v1/jobs/{job_id}/captions", params={"format": "srt"}, timeout=10)
    assert srt.status_code == 200 and srt.text.startswith("1\n00:00:00,")
    assert len(re.findall(r"^\d+\n\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d$", srt.text, re.M)) == len(cues)

    # Not asked for: a 409 that says how to ask, never estimated timestamps.
    assert stack.wait_job(plain)["status"] == "succeeded"
    refused = httpx.get(f"{base}/v1/jobs/{plain}/timestamps", timeout=10)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "timestamps_not_requested"
    # A model whose engine cannot time words is refused at once.
    s1 = httpx.post(f"{base}/v1/audio/speech/async", json={"model": "s1-mini", "input": "Hi.", "timestamps": "word"}, timeout=10)
    assert s1.status_code == 400 and s1.json()["error"]["code"] == "timestamps_unsupported", s1.text

    # The OpenAI endpoint: the audio as always, and the job id to fetch the timestamps by.
    speech = httpx.post(f"{base}/v1/audio/speech", json={"input": "Read along with me.", "response_format": "wav",
                                                          "stream_format": "none", "timestamps": "word"}, timeout=60)
    assert speech.status_code == 200 and speech.content[:4] == b"RIFF"
    sync_id = speech.headers["X-Job-Id"]
    assert stack.wait_job(sync_id)["status"] == "succeeded"
    sync_words = httpx.get(f"{base}/v1/jobs/{sync_id}/timestamps", timeout=10).json()["words"]
    assert [w["word"] for w in sync_words] == ["Read", "along", "with", "me."]

    # SSE: speech.timestamps events, each before the audio of its words, in order over both segments.
    events = []
    with httpx.stream("POST", f"{base}/v1/audio/speech", json={"input": TEXT, "response_format": "pcm", "stream_format": "sse",
                                                              "timestamps": "word"}, timeout=120) as sse:
        assert sse.status_code == 200
        events = [json.loads(line[len("data: "):]) for line in sse.iter_lines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds.count("speech.timestamps") >= 2 and kinds[0] == "speech.timestamps" and kinds[-1] == "speech.audio.done"
    streamed = [w for e in events if e["type"] == "speech.timestamps" for w in e["words"]]
    assert [w["word"] for w in streamed] == TEXT.split()
    assert all(a["end"] <= b["start"] for a, b in zip(streamed, streamed[1:], strict=False))
