"""A request in over HTTP, a real voice note out, through the real broker, Redis and storage."""

from __future__ import annotations

import io
import time
import wave

import httpx
import numpy as np
import pytest
from confluent_kafka import Consumer, Producer

from schemas.codec import Codecs
from schemas.topics import build_catalog
from tests.stack import Stack
from voicenote.kafka import client_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(module_stack: Stack) -> Stack:
    """The API and the synthesis and completion workers, started once for this file's tests (each sends its own
    requests: the garbage test's dead letters are the only ones on the module's topics)."""
    module_stack.start_worker("synthesis")
    module_stack.start_worker("completion")
    module_stack.start_api()
    return module_stack


def _post(stack: Stack, text: str) -> dict:
    resp = httpx.post(f"{stack.base_url}/v1/audio/speech/async", json={"input": text, "response_format": "wav"}, timeout=10)
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_http_request_becomes_a_spoken_wav(stack: Stack) -> None:
    accepted = _post(stack, "Hello from Voicenote. This voice note went through Kafka, Redis and storage.")
    assert accepted["status_url"].endswith(f"/v1/jobs/{accepted['job_id']}")
    assert accepted["estimated_seconds"] > 0

    job = stack.wait_job(accepted["job_id"])
    assert job["status"] == "succeeded", job
    audio = httpx.get(job["audio_url"], timeout=10, follow_redirects=True)
    assert audio.status_code == 200
    assert audio.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(audio.content)) as w:
        assert w.getframerate() == 22050
        assert w.getnchannels() == 1
        frames = w.readframes(w.getnframes())
        seconds = w.getnframes() / w.getframerate()
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768
    assert seconds >= 1.0
    rms = float(np.sqrt(np.mean(samples**2)))
    assert rms > 0.02, f"audio is (nearly) silent: rms={rms}"
    assert job["timings"]["engine_ms"] > 0


def test_garbage_goes_to_dead_letter_and_valid_request_still_succeeds(stack: Stack) -> None:
    settings = stack.settings
    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=settings.kafka.request_partitions,
                            partitions=settings.kafka.partitions)

    producer = Producer(client_config(settings.kafka))
    garbage = [b"not avro at all", b"\xc3\x01" + b"\x00" * 8 + b"wrong fingerprint", b"\xc3\x01short"]
    for i, value in enumerate(garbage):
        producer.produce(catalog.requests.name, key=f"g{i}".encode(), value=value)
    assert producer.flush(10) == 0

    accepted = _post(stack, "A valid request sent after the garbage still gets its voice note.")
    assert stack.wait_job(accepted["job_id"])["status"] == "succeeded"

    consumer = Consumer({**client_config(settings.kafka), "group.id": f"{settings.worker.group_id}-dlq-check",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 2000, "heartbeat.interval.ms": 500})
    consumer.subscribe([catalog.dead_letter.name])
    codecs = Codecs()
    letters = []
    deadline = time.monotonic() + 30
    while len(letters) < len(garbage) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            letters.append(codecs.dead_letter.decode(msg.value()))
    consumer.close()
    assert sorted(d["value"] for d in letters) == sorted(garbage)
    for letter in letters:
        assert letter["source_topic"] == catalog.requests.name
        assert letter["source_offset"] >= 0
        assert letter["consumer"] == "synthesis"
        assert letter["error_type"] in ("undecodable", "unknown_schema")
        assert letter["error_message"]
