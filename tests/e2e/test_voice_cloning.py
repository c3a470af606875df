"""Voices from a clip, end to end (issue 23): a clip of real speech (espeak-ng) registered through
``POST /v1/audio/voices``, then spoken with by an S1-mini worker on the tiny random checkpoint, as real processes
(API, S1-mini synthesis worker, completion worker) over the real broker, Redis and audio store.

The worker fetches the voice from the store on first use, encodes its reference with the codec encoder, writes the
codes back beside it (``codes-<fingerprint>.npy``), and builds the prompt from them: the reference frames reach the
prompt (the worker says how many), and the audio differs from the same request with the built-in voice."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.stack import REPO, Stack
from voicenote.registered_voices import voice_prefix
from voicenote.storage import build_store

pytestmark = pytest.mark.e2e

TRANSCRIPT = "The quick brown fox jumps over the lazy dog, and then it runs back home again."
TEXT = "Hello there."


@pytest.fixture
def speech_clip(tmp_path: Path) -> bytes:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)")
    out = tmp_path / "clip.wav"
    subprocess.run(["espeak-ng", "-w", str(out), TRANSCRIPT], check=True, timeout=60)
    return out.read_bytes()


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("tiktoken")
    d = tmp_path / "openaudio-s1-mini-tiny"
    made = subprocess.run([sys.executable, "-m", "ops.cli", "s1mini", "tiny-checkpoint", str(d)], capture_output=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert made.returncode == 0, made.stderr.decode()
    return d


def _audio(stack: Stack, job_id: str) -> np.ndarray:
    job = stack.wait_job(job_id, timeout=240)
    assert job["status"] == "succeeded", f"{job}\n{stack.log('worker-s1mini')[-3000:]}"
    resp = httpx.get(job["audio_url"], timeout=10, follow_redirects=True)
    assert resp.status_code == 200
    with wave.open(io.BytesIO(resp.content)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def _stored(stack: Stack, voice_id: str) -> dict[str, bytes]:
    async def read() -> dict[str, bytes]:
        store = build_store(stack.settings.storage)
        return {key.rsplit("/", 1)[1]: await store.get(key) for key in await store.list_keys(voice_prefix(voice_id))}

    return asyncio.run(read())


def test_a_voice_registered_from_a_clip_reaches_the_s1mini_prompt(stack: Stack, tiny_checkpoint: Path,
                                                                   speech_clip: bytes) -> None:
    stack.start_worker("synthesis", "worker-s1mini", env={
        "VOICENOTE_ENGINE__KIND": "s1mini", "VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR": str(tiny_checkpoint),
        "VOICENOTE_ENGINE__S1MINI_MAX_NEW_TOKENS": "24", "VOICENOTE_ENGINE__S1MINI_ON_MAX_TOKENS": "truncate"})
    stack.start_worker("completion")
    stack.start_api()

    resp = httpx.post(f"{stack.base_url}/v1/audio/voices", files={"audio": ("clip.wav", speech_clip, "audio/wav")},
                      data={"transcript": TRANSCRIPT, "name": "espeak"}, timeout=30)
    assert resp.status_code == 201, resp.text
    voice = resp.json()
    voice_id = voice["id"]
    assert voice["name"] == "espeak" and voice["transcript"] == TRANSCRIPT
    listed = httpx.get(f"{stack.base_url}/v1/audio/voices", params={"model": "s1-mini"}, timeout=10).json()
    assert voice_id in listed["voices"], listed
    stored = _stored(stack, voice_id)
    assert set(stored) == {"reference.wav", "meta.json"}  # nothing encoded yet: the API has no codec
    with wave.open(io.BytesIO(stored["reference.wav"])) as w:
        assert (w.getframerate(), w.getnchannels()) == (44_100, 1)
        frames = -(-w.getnframes() // 2048)  # one code frame per 2,048 samples, the last one padded

    body = {"model": "s1-mini", "input": TEXT, "response_format": "wav", "seed": 7, "temperature": 0.9, "use_cache": False}
    cloned = httpx.post(f"{stack.base_url}/v1/audio/speech/async", json={**body, "voice": voice_id}, timeout=10)
    assert cloned.status_code == 202, cloned.text
    cloned_audio = _audio(stack, cloned.json()["job_id"])

    # The worker encoded the reference once and kept the codes beside it, (10, frames) for this checkpoint.
    stored = _stored(stack, voice_id)
    codes_files = [name for name in stored if name.startswith("codes-")]
    assert len(codes_files) == 1, stored.keys()
    codes = np.load(io.BytesIO(stored[codes_files[0]]), allow_pickle=False)
    assert codes.shape == (10, frames), codes.shape
    log = stack.log("worker-s1mini")
    assert f"voice {voice_id}: {frames} reference frames (encoded from reference.wav)" in log, log[-3000:]

    # The same request with the built-in voice: same seed, other prompt, other audio.
    plain = httpx.post(f"{stack.base_url}/v1/audio/speech/async", json={**body, "voice": "default"}, timeout=10)
    assert plain.status_code == 202, plain.text
    plain_audio = _audio(stack, plain.json()["job_id"])
    assert cloned_audio.size and plain_audio.size
    assert cloned_audio.shape != plain_audio.shape or not np.array_equal(cloned_audio, plain_audio)

    # Deleted: gone from the store, and the API refuses it (404) before anything is published.
    assert httpx.delete(f"{stack.base_url}/v1/audio/voices/{voice_id}", timeout=10).status_code in (200, 204)
    assert _stored(stack, voice_id) == {}
    again = httpx.post(f"{stack.base_url}/v1/audio/speech/async", json={**body, "voice": voice_id}, timeout=10)
    assert again.status_code == 404 and again.json()["error"]["code"] == "voice_not_found", again.text
