"""The producer API in process against the real broker, Redis and storage: every endpoint and error path."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from confluent_kafka import Consumer

from schemas.codec import Codecs
from schemas.status import JobStatus
from schemas.topics import build_catalog
from tests.integration.conftest import READER, WRITER, api_settings, running_api
from voicenote.audio import encode, to_wav
from voicenote.jobstore import JobStore
from voicenote.kafka import client_config
from voicenote.settings import KafkaSettings, RedisSettings, Settings
from voicenote.storage import build_store

pytestmark = pytest.mark.integration

SPEECH = {"model": "tts-1", "input": "Your parcel is on its way.", "voice": "alloy", "response_format": "wav"}


def _requests_on_topic(settings: Settings, expect: int, timeout: float = 20) -> list[dict[str, Any]]:
    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=settings.kafka.request_partitions,
                            partitions=settings.kafka.partitions)
    consumer = Consumer({**client_config(settings.kafka), "group.id": f"{settings.worker.group_id}-check",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 2000, "heartbeat.interval.ms": 500})
    consumer.subscribe([catalog.requests.name])
    codecs, found = Codecs(), []
    deadline = time.monotonic() + timeout
    # Keep reading a little past ``expect`` so that an unwanted extra record shows up too.
    while time.monotonic() < deadline and (len(found) < expect or time.monotonic() < deadline - timeout + 3):
        msg = consumer.poll(0.3)
        if msg is not None and msg.error() is None:
            found.append(codecs.request.decode(msg.value()))
    consumer.close()
    return found


async def _redis_keys(settings: Settings, pattern: str) -> list[str]:
    client = aioredis.Redis.from_url(settings.redis.url, decode_responses=True)
    try:
        # A large COUNT: the development Redis is shared and may hold many other keys.
        return [k async for k in client.scan_iter(f"{settings.redis.key_prefix}{pattern}", count=10_000)]
    finally:
        await client.aclose()


async def test_async_submission_publishes_a_mapped_request_and_records_it(api_factory: Any, settings: Settings) -> None:
    async with api_factory() as api:
        resp = await api.post("/v1/audio/speech/async", json={**SPEECH, "webhook_url": "https://example.com/hook"})
        assert resp.status_code == 202, resp.text
        body = resp.json()
        assert body["status_url"] == f"http://127.0.0.1:8000/v1/jobs/{body['job_id']}"
        assert body["estimated_seconds"] > 0
        job = (await api.get(f"/v1/jobs/{body['job_id']}")).json()
        assert job["status"] == "queued" and job["created_at"] > 0
    [event] = _requests_on_topic(settings, 1)
    assert event["job_id"] == body["job_id"]
    assert event["voice"] == "en_US-joe-medium" and event["attributes"]["voice_requested"] == "alloy"
    assert event["priority"] == "batch" and event["webhook_url"] == "https://example.com/hook"
    assert event["format"] == "wav" and event["text"] == SPEECH["input"]
    assert event["created_at"] == job["created_at"] and event["attributes"]["owner"] == "writer"  # one event, one record
    # Indexed for the watchdog by the API itself: a broker losing the request before the projection reads it
    # would otherwise leave the job queued and unwatched for good (issue 22, item 5).
    jobs = JobStore.from_settings(settings.redis)
    try:
        assert await jobs.pending_before(job["created_at"] + 1, 10) == [body["job_id"]]
        # The answer's estimate stays on the record: the early check's bound (stream_workers/completion/early_check.py).
        assert float((await jobs.get(body["job_id"]) or {})["estimated_seconds"]) == body["estimated_seconds"]
    finally:
        await jobs.close()


@pytest.mark.parametrize(("patch", "param"), [
    ({"input": "x" * 4097}, "input"),
    ({"input": "   "}, "input"),
    ({"speed": 4.5}, "speed"),
    ({"response_format": "ogg"}, "response_format"),
    ({"voice": "bob"}, "voice"),
    ({"webhook_url": "ftp://example.com/x"}, "webhook_url"),
    ({"stream_format": "chunks"}, "stream_format"),
    ({"surprise": 1}, "surprise"),
])
async def test_malformed_requests_get_400_saying_what_to_fix(api_factory: Any, patch: dict[str, Any], param: str) -> None:
    async with api_factory() as api:
        resp = await api.post("/v1/audio/speech/async", json={**SPEECH, **patch})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and param in error["message"]
    if param == "voice":
        assert "alloy" in error["message"] and "en_US-joe-medium" in error["message"]


async def test_auth_401_403_and_other_keys_jobs_are_invisible(api_factory: Any, settings: Settings) -> None:
    async with api_factory() as api:
        job_id = (await api.post("/v1/audio/speech/async", json=SPEECH)).json()["job_id"]
        no_key = await api.post("/v1/audio/speech/async", json=SPEECH, headers={"Authorization": ""})
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "missing_api_key"
        assert no_key.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = await api.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        forbidden = await api.post("/v1/audio/speech/async", json=SPEECH, headers={"Authorization": f"Bearer {READER}"})
        assert forbidden.status_code == 403 and forbidden.json()["error"]["type"] == "permission_error"
        other = await api.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {READER}"})
        assert other.status_code == 404
    async with api_factory(token=None, allow_anonymous=True) as anon:
        resp = await anon.post("/v1/audio/speech/async", json=SPEECH)
        assert resp.status_code == 202
        assert (await anon.get(f"/v1/jobs/{resp.json()['job_id']}")).json()["status"] == "queued"


async def test_idempotency_key_same_body_same_job_other_body_409(api_factory: Any, settings: Settings) -> None:
    async with api_factory() as api:
        headers = {"Idempotency-Key": "order-42"}
        first = await api.post("/v1/audio/speech/async", json=SPEECH, headers=headers)
        again = await api.post("/v1/audio/speech/async", json=SPEECH, headers=headers)
        assert first.status_code == again.status_code == 202
        assert first.json()["job_id"] == again.json()["job_id"]
        other = await api.post("/v1/audio/speech/async", json={**SPEECH, "input": "Something else."}, headers=headers)
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
        fresh = await api.post("/v1/audio/speech/async", json=SPEECH, headers={"Idempotency-Key": "order-43"})
        assert fresh.json()["job_id"] != first.json()["job_id"]
    events = _requests_on_topic(settings, 2)
    assert sorted(e["job_id"] for e in events) == sorted([first.json()["job_id"], fresh.json()["job_id"]])


async def test_cancel_a_queued_job_but_not_a_finished_one(api_factory: Any, settings: Settings) -> None:
    jobs = JobStore.from_settings(settings.redis)
    async with api_factory() as api:
        queued = (await api.post("/v1/audio/speech/async", json=SPEECH)).json()["job_id"]
        cancelled = await api.delete(f"/v1/jobs/{queued}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled" and cancelled.json()["error"]["code"] == "cancelled"
        assert (await api.get(f"/v1/jobs/{queued}")).json()["status"] == "cancelled"
        again = await api.delete(f"/v1/jobs/{queued}")
        assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_cancellable"

        done = (await api.post("/v1/audio/speech/async", json=SPEECH)).json()["job_id"]
        await jobs.transition(done, JobStatus.succeeded, {"completed_at": int(time.time() * 1000), "audio_key": "x"})
        refused = await api.delete(f"/v1/jobs/{done}")
        assert refused.status_code == 409
        assert (await api.get(f"/v1/jobs/{done}")).json()["status"] == "succeeded"
        assert (await api.delete("/v1/jobs/job_unknown")).status_code == 404
    await jobs.close()


async def test_batch_submission_and_status_counts(api_factory: Any, settings: Settings) -> None:
    jobs = JobStore.from_settings(settings.redis)
    async with api_factory(batch_max_items=3) as api:
        resp = await api.post("/v1/audio/speech/batch", json={"requests": [
            {"text": "One.", "voice_id": "nova", "format": "wav"},
            {"input": "Two.", "voice": "echo", "response_format": "mp3"},
            {"text": "Three."}], "webhook_url": "https://example.com/b"})
        assert resp.status_code == 202, resp.text
        batch = resp.json()
        assert len(batch["job_ids"]) == 3 and len(set(batch["job_ids"])) == 3
        await jobs.transition(batch["job_ids"][0], JobStatus.succeeded, {"completed_at": 1})
        view = (await api.get(f"/v1/batches/{batch['batch_id']}")).json()
        assert view["total"] == 3 and view["counts"] == {"succeeded": 1, "queued": 2}
        assert view["job_ids"] == batch["job_ids"]
        too_many = await api.post("/v1/audio/speech/batch", json={"requests": [{"text": "x"}] * 4})
        assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "batch_too_large"
        assert (await api.get("/v1/batches/batch_nope")).status_code == 404
        other = await api.get(f"/v1/batches/{batch['batch_id']}", headers={"Authorization": f"Bearer {READER}"})
        assert other.status_code == 404
    events = {e["job_id"]: e for e in _requests_on_topic(settings, 3)}
    assert set(events) == set(batch["job_ids"])
    assert {e["batch_id"] for e in events.values()} == {batch["batch_id"]}
    assert {e["format"] for e in events.values()} == {"wav", "mp3"}
    assert {e["webhook_url"] for e in events.values()} == {"https://example.com/b"}
    await jobs.close()


async def test_rate_limit_answers_429_with_retry_after(api_factory: Any) -> None:
    async with api_factory(rate_per_second=0.01, rate_burst=2) as api:
        codes = [(await api.post("/v1/audio/speech/async", json=SPEECH)).status_code for _ in range(2)]
        limited = await api.get("/v1/jobs/job_whatever")
    assert codes == [202, 202]
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"


async def test_body_size_limit_is_413(api_factory: Any) -> None:
    async with api_factory(max_body_bytes=2048) as api:
        resp = await api.post("/v1/audio/speech/async", json={**SPEECH, "input": "y" * 3000})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("stream_format", [None, "none"])
async def test_sync_speech_waits_for_the_completion_and_returns_the_audio(api_factory: Any, settings: Settings,
                                                                         stream_format: str | None) -> None:
    """A stand-in for the workers: store audio and record success for whatever job the API queued. It publishes no
    segments (like a cache hit), so the default (streaming) answer is the stored file in one piece too; "none" asks
    for that answer whatever the worker does."""
    jobs = JobStore.from_settings(settings.redis)
    store = build_store(settings.storage)
    wav = to_wav((0.3 * np.sin(np.arange(22050) / 10)).astype(np.float32), 22050)

    async def fake_worker() -> str:
        while True:
            for key in await _redis_keys(settings, "job:*"):
                job_id = key.split("{")[1].rstrip("}")
                await asyncio.sleep(0.5)  # the API is waiting by now
                await store.put(f"audio/{job_id}.mp3", encode(wav, "mp3"), "audio/mpeg")
                await jobs.transition(job_id, JobStatus.succeeded, {"completed_at": 1, "audio_key": f"audio/{job_id}.mp3",
                                                                   "content_type": "audio/mpeg", "format": "mp3"})
                return job_id
            await asyncio.sleep(0.05)

    async with api_factory() as api:
        worker = asyncio.create_task(fake_worker())
        extra = {"stream_format": stream_format} if stream_format else {}
        resp = await api.post("/v1/audio/speech", json={**SPEECH, "response_format": "mp3", **extra})
        job_id = await worker
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "audio/mpeg" and resp.headers["x-job-id"] == job_id
    assert resp.content[:3] == b"ID3" or resp.content[0] == 0xFF
    assert resp.headers["x-voicenote-streamed"] == "false" and int(resp.headers["content-length"]) == len(resp.content)
    [event] = _requests_on_topic(settings, 1)
    assert event["priority"] == "interactive"
    # Asked for a stream (the default) or not: the worker is told whether to publish segments.
    assert event["attributes"].get("stream") == (None if stream_format == "none" else "true")
    await jobs.close()
    await store.close()


async def test_sync_speech_times_out_with_504_and_the_job_id(api_factory: Any) -> None:
    async with api_factory(sync_timeout_seconds=1.0) as api:
        resp = await api.post("/v1/audio/speech", json=SPEECH)
        assert resp.status_code == 504
        job_id = resp.headers["X-Job-Id"]
        assert job_id in resp.json()["error"]["message"] and resp.headers["Location"].endswith(job_id)
        assert (await api.get(f"/v1/jobs/{job_id}")).json()["status"] == "queued"


async def test_sync_answer_names_the_accepted_job_when_the_redis_pool_stays_exhausted(settings: Settings, unique: str) -> None:
    """Issue 25, defect 3: a sync request whose event was accepted never answers a bare 503. Here the API's pool
    has one connection, which the completion subscription holds: every later Redis call waits
    ``pool_timeout_seconds`` and fails, after the request is on the topic. The answer names the job (body, headers)
    and tells the client not to resubmit."""
    name = f"{unique}-api"  # names the API's Redis connections, to see its subscription in CLIENT LIST
    one = settings.redis.model_copy(update={"url": f"{settings.redis.url}?client_name={name}", "max_connections": 1,
                                            "pool_timeout_seconds": 0.2})
    admin = aioredis.Redis.from_url(settings.redis.url, decode_responses=True)
    try:
        async with running_api(api_settings(settings.model_copy(update={"redis": one}), sync_timeout_seconds=20)) as api:
            deadline = time.monotonic() + 10
            while not any(c["name"] == name and c["psub"] == "1" for c in await admin.client_list()):
                assert time.monotonic() < deadline, "the API never subscribed to completions"
                await asyncio.sleep(0.05)
            resp = await api.post("/v1/audio/speech", json=SPEECH)
    finally:
        await admin.aclose()
    assert resp.status_code == 503, resp.text
    error = resp.json()["error"]
    job_id = resp.headers["X-Job-Id"]
    assert error["code"] == "redis_unavailable" and error["job_id"] == job_id and job_id in error["message"]
    assert resp.headers["Location"] == f"http://127.0.0.1:8000/v1/jobs/{job_id}"
    assert resp.headers["x-should-retry"] == "false" and "Retry-After" not in resp.headers  # poll the job, do not resubmit
    # It was accepted: its one request event is on the topic.
    assert [e["job_id"] for e in _requests_on_topic(settings, 1)] == [job_id]


async def test_failed_job_answers_sync_caller_with_its_error_code(api_factory: Any, settings: Settings) -> None:
    jobs = JobStore.from_settings(settings.redis)

    async def fail_it() -> None:
        while not (keys := await _redis_keys(settings, "job:*")):
            await asyncio.sleep(0.05)
        await jobs.transition(keys[0].split("{")[1].rstrip("}"), JobStatus.failed,
                              {"completed_at": 1, "error_code": "engine_error", "error_message": "the engine broke"})

    async with api_factory() as api:
        task = asyncio.create_task(fail_it())
        resp = await api.post("/v1/audio/speech", json=SPEECH)
        await task
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "engine_error" and "the engine broke" in resp.json()["error"]["message"]
    await jobs.close()


async def test_kafka_unreachable_is_503_and_nothing_is_half_written(settings: Settings) -> None:
    from ops.services import free_port

    dead = settings.model_copy(update={"kafka": KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", delivery_timeout_ms=1500,
                                                              topic_prefix=settings.kafka.topic_prefix)})
    app_settings = api_settings(dead)
    from producer_api.app import create_app

    app = create_app(app_settings)
    import httpx

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                     headers={"Authorization": f"Bearer {WRITER}"}, timeout=30) as api:
            single = await api.post("/v1/audio/speech/async", json=SPEECH, headers={"Idempotency-Key": "k1"})
            batch = await api.post("/v1/audio/speech/batch", json={"requests": [{"text": "a"}, {"text": "b"}]})
    for resp in (single, batch):
        assert resp.status_code == 503, resp.text
        assert resp.headers["Retry-After"] and resp.json()["error"]["code"] == "kafka_unavailable"
    assert await _redis_keys(settings, "job:*") == []
    assert await _redis_keys(settings, "idem:*") == []
    assert await _redis_keys(settings, "batch:*") == []


async def test_redis_down_async_still_accepted_the_rest_503(settings: Settings) -> None:
    from ops.services import free_port

    down = settings.model_copy(update={"redis": RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0",
                                                              key_prefix=settings.redis.key_prefix)})
    async with running_api(api_settings(down, sync_timeout_seconds=5)) as api:
        accepted = await api.post("/v1/audio/speech/async", json=SPEECH)
        assert accepted.status_code == 202, accepted.text
        for resp in (
            await api.post("/v1/audio/speech/async", json=SPEECH, headers={"Idempotency-Key": "r1"}),
            await api.post("/v1/audio/speech/batch", json={"requests": [{"text": "a"}]}),
            await api.post("/v1/audio/speech", json=SPEECH),
            await api.get(f"/v1/jobs/{accepted.json()['job_id']}"),
        ):
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "redis_unavailable" and resp.headers["Retry-After"]
        # Still ready (async is accepted), but it says what is degraded.
        ready = await api.get("/readyz")
        assert ready.status_code == 200 and ready.json()["degraded"] == ["redis"] and ready.json()["checks"]["kafka"] is True
        metrics = (await api.get("/metrics")).text
    assert 'voicenote_api_redis_fallbacks_total{what="rate_limit"}' in metrics
    # Only the one accepted job reached the topic: the refused ones published nothing.
    assert [e["job_id"] for e in _requests_on_topic(settings, 1)] == [accepted.json()["job_id"]]


async def test_a_metrics_port_serves_metrics_there_and_not_on_the_api_port(api_factory: Any) -> None:
    """k8s (eks): the public port behind the Ingress answers no /metrics; Prometheus scrapes its own port."""
    import urllib.request

    from ops.services import free_port

    port = free_port()
    async with api_factory(metrics_port=port) as api:
        await api.post("/v1/audio/speech/async", json=SPEECH)
        assert (await api.get("/metrics")).status_code == 404
        assert "/metrics" not in (await api.get("/openapi.json")).json()["paths"]
        scrape = lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()  # noqa: E731, S310
        scraped = await asyncio.to_thread(scrape)
    assert 'voicenote_api_requests_total{method="POST",route="/v1/audio/speech/async",status="202"} 1.0' in scraped
    assert "voicenote_api_synthesis_lag " in scraped
    with pytest.raises(OSError):  # stopped with the app
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)  # noqa: S310


async def test_metrics_and_openapi_document_every_endpoint(api_factory: Any) -> None:
    async with api_factory() as api:
        await api.post("/v1/audio/speech/async", json=SPEECH)
        metrics = (await api.get("/metrics")).text
        spec = (await api.get("/openapi.json")).json()
    assert 'voicenote_api_requests_total{method="POST",route="/v1/audio/speech/async",status="202"} 1.0' in metrics
    assert 'voicenote_api_jobs_submitted_total{priority="batch"} 1.0' in metrics
    for path in ("/v1/audio/speech", "/v1/audio/speech/async", "/v1/audio/speech/batch", "/v1/jobs/{job_id}",
                 "/v1/jobs/{job_id}/audio", "/v1/batches/{batch_id}", "/healthz", "/readyz", "/metrics"):
        for method, op in spec["paths"][path].items():
            examples = [c.get("example") or c.get("examples") or c.get("schema") for r in op["responses"].values()
                        for c in r.get("content", {}).values()]
            assert any(examples), f"{method} {path} has no example"
    assert spec["components"]["schemas"]["SpeechRequest"]["examples"]
