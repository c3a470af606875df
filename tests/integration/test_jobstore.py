"""The status projection against the real Redis: forward-only, gap-filling, published on completion."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from schemas.status import JobStatus
from voicenote.jobstore import JobStore
from voicenote.settings import Settings

pytestmark = pytest.mark.integration


async def test_late_queued_never_overwrites_succeeded(settings: Settings) -> None:
    store = JobStore.from_settings(settings.redis)
    try:
        assert await store.transition("job_a", JobStatus.succeeded, {"audio_key": "k", "completed_at": 5})
        assert not await store.transition("job_a", JobStatus.queued, {"created_at": 1, "audio_key": "other"})
        record = await store.get("job_a")
        assert record is not None
        assert record["status"] == "succeeded"
        assert record["audio_key"] == "k"  # not overwritten by the stale write
        assert record["created_at"] == "1"  # but the gap it could fill is filled
        assert not await store.transition("job_a", JobStatus.failed, {"error_code": "x"})
        assert (await store.get("job_a"))["status"] == "succeeded"  # type: ignore[index]
    finally:
        await store.close()


async def test_concurrent_writers_end_in_the_terminal_state(settings: Settings) -> None:
    store = JobStore.from_settings(settings.redis)
    try:
        writes = [store.transition(f"job_{i % 10}", JobStatus.queued, {"n": i}) for i in range(50)]
        writes += [store.transition(f"job_{i}", JobStatus.succeeded) for i in range(10)]
        await asyncio.gather(*writes)
        for i in range(10):
            assert (await store.get(f"job_{i}"))["status"] == "succeeded"  # type: ignore[index]
    finally:
        await store.close()


async def test_terminal_transition_is_published_and_records_expire(settings: Settings) -> None:
    store = JobStore.from_settings(settings.redis)
    client = aioredis.Redis.from_url(settings.redis.url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(store.done_channel("job_p"))
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        await store.transition("job_p", JobStatus.queued)
        await store.transition("job_p", JobStatus.failed, {"error_code": "engine_error"})
        message = None
        for _ in range(20):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message:
                break
        assert message is not None and message["type"] == "message"
        ttl = await client.ttl(store.job_key("job_p"))
        assert 0 < ttl <= settings.redis.job_ttl_seconds
    finally:
        await pubsub.aclose()
        await client.aclose()
        await store.close()


async def test_more_concurrent_calls_than_pooled_connections_wait_for_a_connection(settings: Settings, unique: str) -> None:
    """Issue 25, defect 3: a pool of ``max_connections`` makes further calls wait for a free connection (up to
    ``pool_timeout_seconds``) instead of failing with "too many connections" (a false 503 in the API)."""
    name = f"{unique}-pool"  # names this store's connections, to count them in CLIENT LIST
    capped = settings.redis.model_copy(update={"url": f"{settings.redis.url}?client_name={name}", "max_connections": 2,
                                               "pool_timeout_seconds": 10.0})
    store = JobStore.from_settings(capped)
    admin = aioredis.Redis.from_url(settings.redis.url, decode_responses=True)
    try:
        writes = await asyncio.gather(*(store.transition(f"job_{i}", JobStatus.queued, {"created_at": i}) for i in range(20)),
                                      return_exceptions=True)
        assert writes == [True] * 20  # none failed: each waited its turn
        reads = await asyncio.gather(*(store.get(f"job_{i}") for i in range(20)), return_exceptions=True)
        assert [r["created_at"] if isinstance(r, dict) else r for r in reads] == [str(i) for i in range(20)]
        opened = [c for c in await admin.client_list() if c["name"] == name]
        assert 1 <= len(opened) <= 2, f"the pool opened {len(opened)} connections; max_connections is 2"
    finally:
        await admin.aclose()
        await store.close()


async def test_unreachable_redis_is_translated(settings: Settings) -> None:
    from voicenote.errors import JobStoreError
    from voicenote.settings import RedisSettings

    store = JobStore.from_settings(RedisSettings(url="redis://127.0.0.1:1/0"))
    with pytest.raises(JobStoreError):
        await store.transition("job_x", JobStatus.queued)
    assert not await store.ping()


async def test_apply_moves_many_jobs_in_one_round_trip_forward_only(settings: Settings) -> None:
    from voicenote.jobstore import Transition, WebhookState

    store = JobStore.from_settings(settings.redis)
    try:
        await store.transition("job_ap2", JobStatus.succeeded, {"audio_key": "k2"})
        moved = await store.apply(
            [Transition("job_ap1", JobStatus.queued, {"voice": "joe"}), Transition("job_ap2", JobStatus.queued, {"voice": "joe"}),
             Transition("job_ap1", JobStatus.failed, {"error_code": "engine_error"})],
            [WebhookState("job_ap1", "pending", 0)])
        assert moved == [True, False, True]  # job_ap2 was already finished
        one, two = await store.get("job_ap1"), await store.get("job_ap2")
        assert one is not None and two is not None
        assert (one["status"], one["voice"], one["error_code"], one["webhook_status"]) == ("failed", "joe", "engine_error", "pending")
        assert (two["status"], two["voice"]) == ("succeeded", "joe")  # a gap filled, the status kept
        assert await store.apply([]) == []
    finally:
        await store.close()


async def test_batch_records_round_trip_expire_and_delete(settings: Settings) -> None:
    from voicenote.jobstore import BatchRecord

    store = JobStore.from_settings(settings.redis)
    client = aioredis.Redis.from_url(settings.redis.url)
    try:
        batch = BatchRecord(batch_id="batch_rt", owner="alice", created_at=1_700_000_000_123, job_ids=("job_b2", "job_b1", "job_b3"))
        await store.put_batch(batch)
        assert await store.get_batch("batch_rt") == batch  # the order of submission kept
        assert 0 < await client.ttl(store.batch_key("batch_rt")) <= settings.redis.job_ttl_seconds
        assert await store.get_batch("batch_none") is None
        await store.delete_batch("batch_rt")
        assert await store.get_batch("batch_rt") is None
    finally:
        await client.aclose()
        await store.close()


async def test_batch_records_on_unreachable_redis_are_translated() -> None:
    from voicenote.errors import JobStoreError
    from voicenote.jobstore import BatchRecord
    from voicenote.settings import RedisSettings

    store = JobStore.from_settings(RedisSettings(url="redis://127.0.0.1:1/0"))
    with pytest.raises(JobStoreError, match="cannot record batch batch_x"):
        await store.put_batch(BatchRecord(batch_id="batch_x", owner="a", created_at=1, job_ids=("job_1",)))
    with pytest.raises(JobStoreError, match="cannot read batch batch_x"):
        await store.get_batch("batch_x")
    with pytest.raises(JobStoreError, match="cannot remove batch batch_x"):
        await store.delete_batch("batch_x")


async def test_restored_batches_and_answers_expire_when_the_originals_would_and_keep_newer_keys(settings: Settings) -> None:
    import json
    import time

    from voicenote.idempotency import KeptAnswer
    from voicenote.jobstore import BatchRecord

    store = JobStore.from_settings(settings.redis)
    now = int(time.time() * 1000)
    ttl_ms = settings.redis.job_ttl_seconds * 1000
    try:
        fresh = BatchRecord("batch_fresh", "acme", now - 60_000, ("job_1", "job_2"))
        gone = BatchRecord("batch_gone", "acme", now - ttl_ms - 1, ("job_3",))
        assert await store.restore_batches([fresh, gone], now) == 1
        assert await store.get_batch("batch_fresh") == fresh
        assert await store.get_batch("batch_gone") is None
        remaining = await store._redis.pttl(store.batch_key("batch_fresh"))
        assert ttl_ms - 60_000 - 5_000 < remaining <= ttl_ms - 60_000

        answer = KeptAnswer(owner="acme", key_sha256="ab" * 32, fingerprint="fp", response={"job_id": "job_1"},
                            created_at=now - 1000, expires_at=now + 30_000)
        newer = KeptAnswer(owner="acme", key_sha256="cd" * 32, fingerprint="fp", response={"job_id": "job_2"},
                           created_at=now - 1000, expires_at=now + 30_000)
        expired = KeptAnswer(owner="acme", key_sha256="ef" * 32, fingerprint="fp", response={"job_id": "job_3"},
                             created_at=now - 9000, expires_at=now - 1)
        # The key was used again since the loss: the API's newer record stays.
        await store._redis.set(store.idempotency_key("acme", "cd" * 32), json.dumps({"fp": "other", "state": "pending"}))
        assert await store.restore_answers([answer, newer, expired], now) == 1
        held = json.loads(await store._redis.get(store.idempotency_key("acme", "ab" * 32)))
        assert held == {"fp": "fp", "state": "done", "response": {"job_id": "job_1"}}
        assert 25_000 < await store._redis.pttl(store.idempotency_key("acme", "ab" * 32)) <= 30_000
        assert json.loads(await store._redis.get(store.idempotency_key("acme", "cd" * 32)))["fp"] == "other"
        assert await store._redis.get(store.idempotency_key("acme", "ef" * 32)) is None
    finally:
        await store.close()
