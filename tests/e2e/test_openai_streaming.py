"""Streaming speech through real processes: the ``openai`` package streams by default (no ``stream_format``, as
OpenAI does) and wav, pcm and mp3 chunk by chunk when asked; the whole streamed body is a valid file in every
format; ``stream_format: "none"`` is one buffered answer; SSE carries OpenAI's speech events; the streamed audio
is exactly the stored file's audio."""

from __future__ import annotations

import base64
import io
import itertools
import json
import time
import wave

import av
import httpx
import numpy as np
import pytest
from openai import OpenAI

from producer_api.auth import new_token
from tests.stack import Stack
from voicenote.audio_stream import UNKNOWN_SIZE
from voicenote.settings import ApiKey, ApiSettings

pytestmark = pytest.mark.e2e

# Several segments (max 300 characters each, the first at most 80).
SENTENCES = [
    "Streaming speech starts playing before the whole note is ready.",
    "Each sentence is synthesized and sent on as soon as it is done.",
    "The listener hears the beginning while the rest is still being made.",
    "A long voice note therefore feels almost instant.",
    "This paragraph is long enough to need several segments.",
    "The worker publishes every finished segment in order on the segments topic.",
    "The API reads that topic and passes each segment to the waiting response.",
    "Compressed formats are encoded as the audio arrives.",
    "And at the end the stored file holds exactly the same audio.",
]
TEXT = " ".join(SENTENCES)
_unique = itertools.count(1)


def _fresh(text: str) -> str:
    """``text`` with a sentence of its own: no earlier request's cached result answers it (a cache hit has no
    segments, so it is never streamed), without the caller sending anything but OpenAI's parameters."""
    return f"{text} This is note number {next(_unique)} of {time.monotonic_ns() % 100_000}."


def _decoded_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().reshape(-1).astype(np.float64) for f in container.decode(stream)])
        rate = stream.rate
    scale = 32768.0 if np.abs(samples).max() > 2 else 1.0
    assert float(np.sqrt(np.mean((samples / scale) ** 2))) > 0.01, "silent audio"
    return len(samples) / rate


def _wait_job(stack: Stack, token: str, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = httpx.get(f"{stack.base_url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
        if body.get("status") in ("succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished: {body}")


@pytest.fixture(scope="module")
def stack(module_stack: Stack) -> Stack:
    """One API and two workers for this file: its tests only make requests (each its own job, uncached), so
    starting the processes once instead of once per test changes nothing they check."""
    return module_stack


@pytest.fixture(scope="module")
def client_and_token(stack: Stack) -> tuple[OpenAI, str]:
    token, digest = new_token()
    stack.settings = stack.settings.model_copy(update={"api": ApiSettings(keys=[ApiKey(name="customer", sha256=digest)])})
    stack.start_worker("synthesis")
    stack.start_worker("completion")
    stack.start_api()
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=token, timeout=180, max_retries=0), token


def test_openai_client_streams_wav_pcm_and_mp3(stack: Stack, client_and_token: tuple[OpenAI, str]) -> None:
    client, token = client_and_token
    for fmt in ("pcm", "wav", "mp3"):
        first_chunk_ms = 0
        chunks: list[bytes] = []
        with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input=TEXT, response_format=fmt, stream_format="audio",  # type: ignore[arg-type]
                extra_body={"use_cache": False}) as streamed:
            assert streamed.headers["x-voicenote-streamed"] == "true", fmt
            job_id = streamed.headers["x-job-id"]
            for chunk in streamed.iter_bytes():
                if not chunks:
                    first_chunk_ms = int(time.time() * 1000)
                chunks.append(chunk)
        data = b"".join(chunks)
        record = _wait_job(stack, token, job_id)
        assert record["status"] == "succeeded", record
        # Order, not timing: the first audio reached the client before the job's completion was recorded.
        assert first_chunk_ms < int(record["completed_at"]), (fmt, first_chunk_ms, record["completed_at"])
        stored = httpx.get(f"{stack.base_url}/v1/jobs/{job_id}/audio", headers={"Authorization": f"Bearer {token}"},
                           follow_redirects=True, timeout=60).content
        if fmt == "pcm":
            assert streamed.headers["x-sample-rate"] == "22050"
            # The stream is the stored file's audio, sample for sample: segments concatenate to the joined audio.
            assert data == stored and len(data) / 2 / 22050 > 10
        elif fmt == "wav":
            assert data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") == UNKNOWN_SIZE
            assert data[44:] == stored[44:] and _decoded_seconds(data) > 10
        else:
            assert streamed.headers["content-type"] == "audio/mpeg"
            assert abs(_decoded_seconds(data) - _decoded_seconds(stored)) < 0.2


def test_openai_client_streams_by_default(stack: Stack, client_and_token: tuple[OpenAI, str]) -> None:
    """The official client, streaming with with_streaming_response and no extra parameters (so no stream_format):
    the first bytes reach it before the job is done, and what it read in all is the stored file's audio."""
    client, token = client_and_token
    chunk_times: list[int] = []
    chunks: list[bytes] = []
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=_fresh(TEXT)) as streamed:
        assert streamed.headers["x-voicenote-streamed"] == "true" and streamed.headers["content-type"] == "audio/mpeg"
        assert "content-length" not in streamed.headers
        job_id = streamed.headers["x-job-id"]
        for chunk in streamed.iter_bytes():
            chunk_times.append(int(time.time() * 1000))
            chunks.append(chunk)
    record = _wait_job(stack, token, job_id)
    assert record["status"] == "succeeded", record
    # Order, not timing: the first audio reached the client before the job's completion was recorded (the
    # segments are on the broker before the result, so this holds however slow the machine is).
    assert chunk_times[0] < int(record["completed_at"]), (chunk_times[0], record["completed_at"])
    stored = httpx.get(f"{stack.base_url}/v1/jobs/{job_id}/audio", headers={"Authorization": f"Bearer {token}"},
                       follow_redirects=True, timeout=60).content
    assert abs(_decoded_seconds(b"".join(chunks)) - _decoded_seconds(stored)) < 0.2


SHORT = " ".join(SENTENCES[:3])  # three segments: the first short, then the rest


def test_a_whole_streamed_body_is_a_valid_file_in_every_format(stack: Stack, client_and_token: tuple[OpenAI, str]) -> None:
    """A client that reads the whole (streamed) body gets a file that decodes to the stored file's audio: wav through
    Python's wave and PyAV, mp3, opus, aac and flac through PyAV, pcm sample for sample. Unknown extra_body fields
    are named as ignored, not refused."""
    client, token = client_and_token
    for fmt in ("wav", "mp3", "opus", "aac", "flac", "pcm"):
        raw = client.audio.speech.with_raw_response.create(model="tts-1", voice="nova", input=_fresh(SHORT),
                                                          response_format=fmt,  # type: ignore[arg-type]
                                                          extra_body={"lang_code": "a"})
        data = raw.content
        assert raw.headers["x-voicenote-streamed"] == "true", fmt
        assert raw.headers["x-voicenote-ignored-params"] == "lang_code", fmt
        # The stream can end before the completion worker has recorded the job: its stored file comes after.
        assert _wait_job(stack, token, raw.headers["x-job-id"])["status"] == "succeeded"
        stored = httpx.get(f"{stack.base_url}/v1/jobs/{raw.headers['x-job-id']}/audio", follow_redirects=True,
                           headers={"Authorization": f"Bearer {token}"}, timeout=60).content
        if fmt == "pcm":
            assert data == stored and len(data) > 22050 * 2, fmt
            continue
        if fmt == "wav":
            # The header says "unknown length" (0xFFFFFFFF, as OpenAI's stream): wave reports that as its frame count
            # and reads every sample there is.
            assert int.from_bytes(data[40:44], "little") == UNKNOWN_SIZE
            with wave.open(io.BytesIO(data)) as reader:
                assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 22050)
                assert reader.readframes(reader.getnframes()) == stored[44:]
        assert abs(_decoded_seconds(data) - _decoded_seconds(stored)) < 0.25, fmt


def test_stream_format_none_is_one_buffered_answer(stack: Stack, client_and_token: tuple[OpenAI, str]) -> None:
    client, token = client_and_token
    raw = client.audio.speech.with_raw_response.create(model="tts-1", voice="echo", input=_fresh(SHORT), response_format="wav",
                                                      extra_body={"stream_format": "none"})
    data = raw.content
    assert raw.headers["x-voicenote-streamed"] == "false" and int(raw.headers["content-length"]) == len(data)
    # The stored file itself, with the real sizes in its header.
    assert int.from_bytes(data[40:44], "little") == len(data) - 44
    with wave.open(io.BytesIO(data)) as reader:
        assert reader.getnframes() == (len(data) - 44) // 2 and reader.getframerate() == 22050


def test_sse_carries_openai_speech_events(stack: Stack, client_and_token: tuple[OpenAI, str]) -> None:
    _, token = client_and_token
    events = []
    with httpx.stream("POST", f"{stack.base_url}/v1/audio/speech", timeout=180, headers={"Authorization": f"Bearer {token}"},
                      json={"model": "tts-1", "voice": "nova", "input": TEXT, "response_format": "pcm",
                            "stream_format": "sse", "use_cache": False}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1) and len(events) > 2
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_characters"] == len(TEXT)
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    samples = np.frombuffer(pcm, dtype="<i2")
    assert len(samples) / 22050 > 10 and np.abs(samples).max() > 1000


def test_stream_of_a_bad_request_answers_like_a_plain_one(stack: Stack, client_and_token: tuple[OpenAI, str]) -> None:
    _, token = client_and_token
    for extra in ({"stream_format": "audio"}, {}):  # asked for, and the default
        response = httpx.post(f"{stack.base_url}/v1/audio/speech", timeout=60, headers={"Authorization": f"Bearer {token}"},
                              json={"model": "tts-1", "voice": "nobody", "input": "hi", **extra})
        assert response.status_code == 400 and response.json()["error"]["param"] == "voice", extra
