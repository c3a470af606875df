"""S1-mini end to end: the API, a CPU (Piper) synthesis worker, an S1-mini synthesis worker on a tiny
random checkpoint and the completion worker as real processes. Each model reaches the engine that
serves it through its own topic; sampling parameters change S1-mini's audio and Piper reports them ignored."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest
from confluent_kafka import Producer

from ops.lag import group_lag, list_groups
from ops.services import free_port
from schemas.codec import Codecs
from schemas.topics import build_catalog
from tests.stack import CHECKOUT_PATH, REPO, Stack
from voicenote.kafka import client_config

pytestmark = pytest.mark.e2e

IGNORED = "X-Voicenote-Ignored-Params"
TEXT = "Hello there."


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A tiny openaudio-s1-mini directory with random weights, written by the documented command."""
    pytest.importorskip("torch")
    pytest.importorskip("tiktoken")  # the checkpoint's BPE tokenizer needs it
    d = tmp_path / "openaudio-s1-mini-tiny"
    made = subprocess.run([sys.executable, "-m", "ops.cli", "s1mini", "tiny-checkpoint", str(d)], capture_output=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": CHECKOUT_PATH}, timeout=120)
    assert made.returncode == 0, made.stderr.decode()
    assert f"VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR={d}" in made.stdout.decode()
    return d


def _wav(data: bytes) -> tuple[int, np.ndarray]:
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnchannels() == 1
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def _submit(stack: Stack, body: dict) -> httpx.Response:
    resp = httpx.post(f"{stack.base_url}/v1/audio/speech/async", json={"input": TEXT, "response_format": "wav", **body}, timeout=10)
    assert resp.status_code == 202, resp.text
    return resp


def _audio(stack: Stack, job_id: str, worker: str) -> tuple[int, np.ndarray]:
    try:
        job = stack.wait_job(job_id, timeout=240)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker} log:\n{stack.log(worker)[-3000:]}") from None
    assert job["status"] == "succeeded", f"{job}\n{stack.log(worker)[-3000:]}"
    audio = httpx.get(job["audio_url"], timeout=10, follow_redirects=True)
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    return _wav(audio.content)


def test_s1mini_speaks_through_its_own_topic_and_sampling_parameters_change_its_audio(stack: Stack, tiny_checkpoint: Path) -> None:
    stack.start_worker("synthesis", "worker-piper")
    stack.start_worker("synthesis", "worker-s1mini", env={
        "VOICENOTE_ENGINE__KIND": "s1mini", "VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR": str(tiny_checkpoint),
        "VOICENOTE_ENGINE__S1MINI_MAX_NEW_TOKENS": "24",
        # Random weights rarely say "end of speech": keep what 24 frames made instead of failing the job.
        "VOICENOTE_ENGINE__S1MINI_ON_MAX_TOKENS": "truncate"})  # as the command prints them
    stack.start_worker("completion")
    stack.start_api()

    # Sampled (temperature 0.9) with a seed, one request at a time so no batch-mate is involved.
    first = _submit(stack, {"model": "s1-mini", "voice": "alloy", "temperature": 0.9, "seed": 1, "use_cache": False})
    assert IGNORED not in first.headers
    rate, seed_1 = _audio(stack, first.json()["job_id"], "worker-s1mini")
    assert rate == 44100 and seed_1.size > 0 and np.abs(seed_1).max() > 0
    again = _submit(stack, {"model": "openaudio-s1-mini", "temperature": 0.9, "seed": 1, "use_cache": False})
    _, seed_1_again = _audio(stack, again.json()["job_id"], "worker-s1mini")
    other = _submit(stack, {"model": "s1-mini", "temperature": 0.9, "seed": 2, "use_cache": False})
    _, seed_2 = _audio(stack, other.json()["job_id"], "worker-s1mini")
    greedy = _submit(stack, {"model": "s1-mini", "temperature": 0.0, "use_cache": False})
    _, greedy_audio = _audio(stack, greedy.json()["job_id"], "worker-s1mini")
    assert np.array_equal(seed_1, seed_1_again)  # the same seed, the same audio
    assert not np.array_equal(seed_1, seed_2)  # another seed, other audio
    assert not np.array_equal(seed_1, greedy_audio)  # the temperature reaches the engine too

    # The OpenAI-compatible synchronous endpoint on S1-mini: speed is not S1-mini's to honour, and says so.
    sync = httpx.post(f"{stack.base_url}/v1/audio/speech", json={"model": "s1-mini", "input": TEXT, "voice": "cedar",
                                                                 "response_format": "wav", "speed": 1.5, "seed": 3}, timeout=90)
    assert sync.status_code == 200, sync.text
    assert sync.headers[IGNORED] == "speed" and _wav(sync.content)[0] == 44100

    # Piper, on the CPU topic, uses none of the sampling parameters: the header and the job record say so.
    piper = _submit(stack, {"model": "tts-1", "voice": "marin", "temperature": 0.9, "seed": 1, "instructions": "Softly."})
    assert piper.headers[IGNORED] == "instructions, temperature, seed"
    rate, speech = _audio(stack, piper.json()["job_id"], "worker-piper")
    assert rate == 22050 and speech.size > 22050 // 2
    job = httpx.get(piper.json()["status_url"], timeout=5).json()
    assert job["model"] == "tts-1" and job["ignored_params"] == ["instructions", "temperature", "seed"]

    # A direct publisher writes to the S1-mini topic: the S1-mini worker speaks it, the completion role projects it.
    settings = stack.settings
    topic = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=settings.kafka.request_partitions,
                          partitions=settings.kafka.partitions).requests_for("s1mini").name
    producer = Producer(client_config(settings.kafka))
    producer.produce(topic, key=b"job_direct_s1", value=Codecs().request.encode({
        "job_id": "job_direct_s1", "created_at": int(time.time() * 1000), "text": TEXT, "voice": "default", "format": "wav",
        "model": "s1-mini", "seed": 7, "temperature": 0.5}))
    assert producer.flush(10) == 0
    assert _audio(stack, "job_direct_s1", "worker-s1mini")[0] == 44100
    assert httpx.get(f"{stack.base_url}/v1/jobs/job_direct_s1", timeout=5).json()["model"] == "s1-mini"

    # Both running engines advertised what they serve.
    running = {e["model"]: e["running"] for e in httpx.get(f"{stack.base_url}/v1/audio/voices", timeout=5).json()["data"]}
    assert running["s1-mini"]["voices"] == ["default"] and running["s1-mini"]["model_version"].startswith("openaudio-s1-mini-")
    assert "en_US-joe-medium" in running["tts-1"]["voices"] and running["tts-1"]["sample_rate"] == 22050

    # Each synthesis worker consumed only its own family's topic.
    assert "voicenote.requests.s1mini.v1" in stack.log("worker-s1mini") and "-synthesis-s1mini" in stack.log("worker-s1mini")
    assert "synthesis consumes" in stack.log("worker-piper") and ".requests.s1mini." not in _consumes_line(stack.log("worker-piper"))


def _consumes_line(log: str) -> str:
    return next(line for line in log.splitlines() if "synthesis consumes" in line)


def test_a_refused_checkpoint_keeps_the_worker_up_not_ready_saying_why_and_consuming_nothing(stack: Stack, tiny_checkpoint: Path) -> None:
    (tiny_checkpoint / "codec.pth").unlink()
    port = free_port()
    proc = stack.start("worker-s1mini", "worker", "synthesis", "--web-port", str(port), env={
        "VOICENOTE_ENGINE__KIND": "s1mini", "VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR": str(tiny_checkpoint)})
    deadline, ready = time.monotonic() + 90, None
    while time.monotonic() < deadline and ready is None:
        assert proc.poll() is None, f"the worker exited with {proc.returncode}:\n{stack.log('worker-s1mini')[-3000:]}"
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
        except httpx.HTTPError:
            time.sleep(0.3)
    assert ready is not None, stack.log("worker-s1mini")[-3000:]
    assert ready.status_code == 503
    reason = ready.json()["waiting_on"]["engine"]["error"]
    assert "codec.pth" in reason and "not found" in reason, reason
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200  # alive: no restart

    # A request on its topic waits for a worker that can serve it: this one never joins the group.
    settings = stack.settings
    topic = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=settings.kafka.request_partitions,
                          partitions=settings.kafka.partitions).requests_for("s1mini").name
    producer = Producer(client_config(settings.kafka))
    producer.produce(topic, key=b"job_waits", value=Codecs().request.encode({
        "job_id": "job_waits", "created_at": int(time.time() * 1000), "text": TEXT, "voice": "default", "format": "wav",
        "model": "s1-mini"}))
    assert producer.flush(10) == 0
    time.sleep(5)
    assert proc.poll() is None and httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 503
    group = f"{settings.worker.group_id}-synthesis-s1mini"
    assert group not in list_groups(settings.kafka) and group_lag(settings.kafka, group) == []
    log = stack.log("worker-s1mini")
    assert log.count("engine not loaded") == 1 and reason in log and "synthesis consumes" not in log
    assert stack.stop("worker-s1mini", timeout=20) == 0  # and it stops when told
