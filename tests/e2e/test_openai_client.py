"""The official ``openai`` package, unchanged, against the real API and workers: playable audio in all six formats."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from openai import OpenAI

from producer_api.auth import new_token
from tests.stack import Stack
from voicenote.settings import ApiKey, ApiSettings

pytestmark = pytest.mark.e2e

TEXT = "Hello from Voicenote, speaking through the OpenAI client."


def _playable_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().reshape(-1).astype(np.float64) for f in container.decode(stream)])
        rate = stream.rate
    scale = 32768.0 if np.abs(samples).max() > 2 else 1.0
    assert float(np.sqrt(np.mean((samples / scale) ** 2))) > 0.01, "silent audio"
    return len(samples) / rate


def test_openai_client_gets_playable_audio_in_every_format(stack: Stack) -> None:
    token, digest = new_token()
    stack.settings = stack.settings.model_copy(update={"api": ApiSettings(keys=[ApiKey(name="customer", sha256=digest)])})
    stack.start_worker("synthesis")
    stack.start_worker("completion")
    stack.start_api()
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key=token, timeout=120, max_retries=0)

    for fmt in ("mp3", "opus", "aac", "flac", "wav"):
        response = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt)  # type: ignore[arg-type]
        assert _playable_seconds(response.content) > 1.0, fmt

    pcm = client.audio.speech.with_raw_response.create(model="tts-1", voice="nova", input=TEXT, response_format="pcm")
    assert pcm.headers["x-sample-rate"] == "22050" and pcm.headers["x-sample-format"] == "s16le"
    samples = np.frombuffer(pcm.content, dtype="<i2")
    assert len(samples) / 22050 > 1.0 and np.abs(samples).max() > 1000

    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="onyx", input=TEXT, response_format="mp3") as streamed:
        assert streamed.headers["content-type"] == "audio/mpeg"
        data = b"".join(streamed.iter_bytes())
    assert _playable_seconds(data) > 1.0
