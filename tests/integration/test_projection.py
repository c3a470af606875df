"""The status projection: forward-only, expiring, rebuilt from the topics into an empty Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ops.rebuild import rebuild
from schemas.codec import Codecs
from schemas.events import JobCompletion, SynthesisRequest, SynthesisResult
from schemas.topics import build_catalog
from stream_workers.completion.status import StatusProjector
from voicenote.jobstore import JobStore
from voicenote.kafka import AsyncProducer, client_config, ensure_topics
from voicenote.settings import Settings

pytestmark = pytest.mark.integration


def _request(job_id: str, created_at: int, **extra: Any) -> SynthesisRequest:
    return SynthesisRequest(job_id=job_id, created_at=created_at, text="hello", voice="joe", format="wav", speed=1.0,
                            priority="batch", webhook_url=None, batch_id=None, **extra)


def _completion(job_id: str, status: str, created_at: int, **extra: Any) -> JobCompletion:
    return JobCompletion(job_id=job_id, status=status, created_at=created_at, completed_at=created_at + 800, **extra)


async def test_rebuild_replays_topics_into_an_empty_redis(settings: Settings, jobs: JobStore) -> None:
    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=settings.kafka.request_partitions,
                            partitions=settings.kafka.partitions)
    ensure_topics(settings.kafka, catalog.all())
    codecs = Codecs()
    producer = AsyncProducer(settings.kafka)
    now = int(time.time() * 1000)
    ancient = now - (settings.redis.job_ttl_seconds + 3600) * 1000
    try:
        # Completion of job_rbdone published before its request: replay order must not matter.
        await producer.send(catalog.completions.name, codecs.completion.encode_event(_completion(
            "job_rbdone", "succeeded", now, audio_key="audio/ne/job_rbdone.wav", size_bytes=10, engine="null")),
            key=b"job_rbdone")
        for request in (_request("job_rbdone", now), _request("job_rbqueued", now), _request("job_rbfailed", now),
                        _request("job_rbancient", ancient)):
            await producer.send(catalog.requests.name, codecs.request.encode_event(request), key=request.job_id.encode())
        await producer.send(catalog.completions.name, codecs.completion.encode_event(_completion(
            "job_rbfailed", "failed", now, error_code="unknown_voice", error_message="no voice 'x'")), key=b"job_rbfailed")
        await producer.send(catalog.requests.name, b"garbage", key=b"junk")
    finally:
        producer.close()

    assert await jobs.get("job_rbdone") is None  # empty Redis: nothing projected yet
    report = await rebuild(settings, jobs)
    assert (report.requests, report.completions, report.skipped_expired, report.undecodable) == (3, 2, 1, 1)

    done = await jobs.get("job_rbdone")
    assert done is not None
    assert done["status"] == "succeeded" and done["audio_key"] == "audio/ne/job_rbdone.wav"
    assert done["voice"] == "joe"  # the later-replayed request still filled its fields in
    assert (await jobs.get("job_rbqueued") or {})["status"] == "queued"
    failed = await jobs.get("job_rbfailed")
    assert failed is not None and (failed["status"], failed["error_code"]) == ("failed", "unknown_voice")
    assert await jobs.get("job_rbancient") is None

    ttl = await jobs._redis.ttl(jobs.job_key("job_rbdone"))
    assert 0 < ttl <= settings.redis.job_ttl_seconds

    again = await rebuild(settings, jobs)  # idempotent: replaying twice moves nothing backwards
    assert again.requests == 3
    assert (await jobs.get("job_rbdone") or {})["status"] == "succeeded"


async def test_transitions_only_move_forward(jobs: JobStore) -> None:
    projector = StatusProjector(jobs)
    now = int(time.time() * 1000)
    assert await projector.on_completion(_completion("job_fwd1", "failed", now, error_code="engine_error"))
    assert not await projector.on_request(_request("job_fwd1", now))
    assert not await projector.on_completion(_completion("job_fwd1", "succeeded", now))
    record = await jobs.get("job_fwd1")
    assert record is not None and (record["status"], record["error_code"]) == ("failed", "engine_error")


async def test_completion_with_webhook_shows_pending_until_the_dispatcher_reports(jobs: JobStore) -> None:
    projector = StatusProjector(jobs)
    now = int(time.time() * 1000)
    await projector.on_completion(_completion("job_whpend", "succeeded", now, webhook_url="https://hooks.example/in"))
    assert (await jobs.get("job_whpend") or {})["webhook_status"] == "pending"
    await jobs.record_webhook("job_whpend", "delivered", 1)
    await projector.on_completion(_completion("job_whpend", "succeeded", now, webhook_url="https://hooks.example/in"))  # redelivery
    assert (await jobs.get("job_whpend") or {})["webhook_status"] == "delivered"
    await projector.on_completion(_completion("job_nohook", "succeeded", now))
    assert "webhook_status" not in (await jobs.get("job_nohook") or {})


async def test_a_second_result_of_a_completed_job_makes_no_second_completion(jobs: JobStore) -> None:
    from schemas.status import JobStatus
    from stream_workers.completion.status import fresh_results

    projector = StatusProjector(jobs)
    now = int(time.time() * 1000)
    await projector.on_completions([_completion("job_dupa", "succeeded", now)])
    await jobs.transition("job_dupc", JobStatus.cancelled, {"completed_at": now})  # cancelled by the API: no event yet
    emitted = await projector.already_completed(["job_dupa", "job_dupb", "job_dupc"])
    assert emitted == {"job_dupa"}
    results = [SynthesisResult(job_id=j, status="succeeded", created_at=now, synthesized_at=now)
               for j in ("job_dupa", "job_dupb", "job_dupc", "job_dupb")]
    assert [r.job_id for r in fresh_results(results, emitted)] == ["job_dupb", "job_dupc"]  # once each, in order
    assert await projector.already_completed([]) == set()


async def test_webhook_state_never_regresses(jobs: JobStore) -> None:
    assert await jobs.record_webhook("job_whst", "retrying", 1, "HTTP 500")
    assert await jobs.record_webhook("job_whst", "delivered", 2)
    assert not await jobs.record_webhook("job_whst", "retrying", 1, "HTTP 500")  # a redelivered older attempt
    record = await jobs.get("job_whst")
    assert record is not None and (record["webhook_status"], record["webhook_attempts"]) == ("delivered", "2")
    assert await jobs._redis.ttl(jobs.job_key("job_whst")) > 0


async def test_restored_webhook_states_keep_newer_ones_and_bring_back_no_bare_records(jobs: JobStore) -> None:
    from voicenote.jobstore import WebhookState

    projector = StatusProjector(jobs)
    now = int(time.time() * 1000)
    hook = "https://hooks.example/in"
    await projector.on_completions([_completion(j, "succeeded", now, webhook_url=hook)
                                    for j in ("job_rwpend", "job_rwlive", "job_rwnewer")])
    # Since the loss, the live dispatcher recorded these itself: the rebuild's older outcomes must not undo them.
    await jobs.record_webhook("job_rwlive", "delivered", 1)
    await jobs.record_webhook("job_rwnewer", "retrying", 4, "HTTP 503")
    written = await jobs.restore_webhooks([
        WebhookState("job_rwpend", "delivered", 2), WebhookState("job_rwlive", "retrying", 1, "HTTP 500"),
        WebhookState("job_rwnewer", "failed", 3, "HTTP 500"),
        WebhookState("job_rwgone", "delivered", 1),  # its record expired (or was never projected)
    ])
    assert written == 1

    def state(record: dict[str, str] | None) -> tuple[str, str, str]:
        r = record or {}
        return r.get("webhook_status", ""), r.get("webhook_attempts", ""), r.get("webhook_last_error", "")
    assert state(await jobs.get("job_rwpend")) == ("delivered", "2", "")
    assert state(await jobs.get("job_rwlive")) == ("delivered", "1", "")
    assert state(await jobs.get("job_rwnewer")) == ("retrying", "4", "HTTP 503")
    assert await jobs.get("job_rwgone") is None  # no record holding only a webhook state
    assert await jobs.restore_webhooks([]) == 0


async def test_rebuild_reads_every_record_of_batched_produces(settings: Settings, jobs: JobStore) -> None:
    # Regression: Tansu reports the high watermark in batches after a batched produce; the rebuild must
    # read to the partition's end, not to that watermark.
    from confluent_kafka import Producer

    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=1, partitions=1)
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"request_partitions": 1, "partitions": 1})})
    ensure_topics(settings.kafka, catalog.all())
    codecs = Codecs()
    producer = Producer({**client_config(settings.kafka), "linger.ms": 50})
    now = int(time.time() * 1000)
    for i in range(40):
        producer.produce(catalog.completions.name, key=f"job_b{i}".encode(),
                         value=codecs.completion.encode_event(_completion(f"job_b{i}", "succeeded", now)))
    assert producer.flush(10) == 0
    report = await rebuild(settings, jobs)
    assert report.completions == 40
    statuses = [((await jobs.get(f"job_b{i}")) or {}).get("status") for i in range(40)]
    assert statuses == ["succeeded"] * 40


async def test_guard_rebuilds_an_emptied_redis_once_and_leaves_a_built_one_alone(settings: Settings, jobs: JobStore) -> None:
    from stream_workers.completion.projection import ProjectionGuard

    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=settings.kafka.request_partitions,
                            partitions=settings.kafka.partitions)
    ensure_topics(settings.kafka, catalog.all())
    codecs = Codecs()
    producer = AsyncProducer(settings.kafka)
    now = int(time.time() * 1000)
    try:
        await producer.send(catalog.requests.name, codecs.request.encode_event(_request("job_heal1", now)), key=b"job_heal1")
        await producer.send(catalog.completions.name, codecs.completion.encode_event(_completion("job_heal1", "succeeded", now)),
                            key=b"job_heal1")
    finally:
        producer.close()
    guard = ProjectionGuard(jobs, lambda: rebuild(settings, jobs))
    other = ProjectionGuard(jobs, lambda: rebuild(settings, jobs))

    first = await guard.check()  # no epoch yet: this worker claims it and rebuilds
    assert first is not None and (first.requests, first.completions) == (1, 1)
    assert (await jobs.get("job_heal1") or {})["status"] == "succeeded"
    assert (await jobs.projection_epoch() or "").startswith("built:")
    assert await guard.check() is None and await other.check() is None  # built: nothing to do

    # Redis comes back empty: the job's record and the epoch are gone; the next check rebuilds.
    await jobs._redis.delete(jobs.job_key("job_heal1"), jobs.epoch_key())
    assert await jobs.get("job_heal1") is None
    assert await other.check() is not None
    assert (await jobs.get("job_heal1") or {})["status"] == "succeeded"

    # A rebuild in progress elsewhere (its lease held) is not started twice.
    await jobs._redis.delete(jobs.epoch_key())
    assert await jobs.claim_projection_epoch("rebuilding:elsewhere", 60)
    assert await guard.check() is None
    assert guard.rebuilds == 1 and other.rebuilds == 1


async def _wipe(settings: Settings, jobs: JobStore) -> None:
    """Redis loses this test's keys (the shared Redis: only this prefix), as if it came back empty."""
    keys = [key async for key in jobs._redis.scan_iter(match=f"{settings.redis.key_prefix}*", count=10_000)]
    assert keys, "nothing to lose"
    await jobs._redis.unlink(*keys)


async def test_rebuild_restores_batches_and_idempotency_answers_as_the_api_gave_them(
        settings: Settings, jobs: JobStore, api_factory: Any) -> None:
    from tests.integration.conftest import READER

    batch_body = {"requests": [{"input": "One."}, {"input": "Two.", "instructions": "calmly"}, {"text": "Three.", "format": "wav"}]}
    async_body = {"input": "Hello once.", "response_format": "wav"}
    async with api_factory() as api:
        batch = await api.post("/v1/audio/speech/batch", json=batch_body, headers={"Idempotency-Key": "batch-key-1"})
        single = await api.post("/v1/audio/speech/async", json=async_body, headers={"Idempotency-Key": "async-key-1"})
        assert (batch.status_code, single.status_code) == (202, 202), (batch.text, single.text)
        batch_id = batch.json()["batch_id"]
        view = await api.get(f"/v1/batches/{batch_id}")
        assert view.status_code == 200

        await _wipe(settings, jobs)
        assert (await api.get(f"/v1/batches/{batch_id}")).status_code == 404  # lost with Redis

        report = await rebuild(settings, jobs)
        assert (report.requests, report.batches, report.batches_incomplete, report.idempotency_keys) == (4, 1, 0, 2)

        # The batch answers as before the loss: same jobs in the same order, same time, same owner check.
        again = await api.get(f"/v1/batches/{batch_id}")
        assert again.status_code == 200 and again.json() == view.json()
        assert again.json()["job_ids"] == batch.json()["job_ids"]
        other = await api.get(f"/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {READER}"})
        assert other.status_code == 404

        # A retried POST with the same key and body replays the original answer: no second job.
        retried = await api.post("/v1/audio/speech/async", json=async_body, headers={"Idempotency-Key": "async-key-1"})
        assert retried.status_code == 202 and retried.json() == single.json()
        retried_batch = await api.post("/v1/audio/speech/batch", json=batch_body, headers={"Idempotency-Key": "batch-key-1"})
        assert retried_batch.status_code == 202 and retried_batch.json() == batch.json()
        assert retried_batch.json()["ignored_params"] == {batch.json()["job_ids"][1]: ["instructions"]}
        # The same key with another body is still refused.
        reused = await api.post("/v1/audio/speech/async", json={**async_body, "input": "Something else."},
                                headers={"Idempotency-Key": "async-key-1"})
        assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"
        reused_batch = await api.post("/v1/audio/speech/batch", json={"requests": [{"input": "Other."}]},
                                      headers={"Idempotency-Key": "batch-key-1"})
        assert reused_batch.status_code == 409

    report = await rebuild(settings, jobs)  # the answers are there already: kept, not written again
    assert (report.requests, report.batches, report.idempotency_keys) == (4, 1, 0)
    record = await jobs.get(single.json()["job_id"])
    assert record is not None and record["owner"] == "writer"
