"""SyncSpeech.wait_for_end, the one wait for a job's end that the whole-file and the streamed answers share
(real Redis: the job store's records and its completion announcements through the API's CompletionWaiter)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from producer_api.services import sync as sync_module
from producer_api.services.common import Links
from producer_api.services.sync import SyncSpeech
from producer_api.waiter import CompletionWaiter
from schemas.status import JobStatus
from voicenote.jobstore import JobStore, redis_client
from voicenote.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def speech(settings: Settings, jobs: JobStore) -> AsyncIterator[SyncSpeech]:
    client = redis_client(settings.redis)
    waiter = CompletionWaiter(client, jobs.done_channel(""))  # as the API's lifespan builds it
    waiter.start()
    await asyncio.wait_for(waiter.subscribed.wait(), 10)
    # Only the waiter and the job store take part in the wait; the rest is not used.
    none: Any = None
    try:
        yield SyncSpeech(submission=none, admission=none, router=none, waiter=waiter, jobs=jobs, store=none,
                         timeout_seconds=5, links=Links("http://test"))
    finally:
        await waiter.stop()
        await client.aclose()


async def test_the_wait_ends_when_the_completion_is_announced(speech: SyncSpeech, jobs: JobStore, unique: str) -> None:
    loop = asyncio.get_running_loop()
    job_id = f"job_{unique}"
    await jobs.transition(job_id, JobStatus.queued, {"created_at": 1})
    assert await speech.wait_for_end(job_id, loop.time() + 0.05) is None  # not over: a round ends, no record

    async def finish() -> None:
        await asyncio.sleep(0.3)
        await jobs.transition(job_id, JobStatus.succeeded, {"audio_key": "k", "completed_at": 2})

    started = loop.time()
    finishing = asyncio.create_task(finish())
    assert await speech.wait_for_end(job_id, loop.time() + 30) is None  # woken by the announcement...
    assert loop.time() - started < sync_module.RECHECK_SECONDS  # ...not by the recheck
    await finishing
    record = await speech.wait_for_end(job_id, loop.time() + 30)  # ...and the next round reads the record
    assert record is not None and record["status"] == "succeeded" and record["audio_key"] == "k"


async def test_the_wait_ends_early_for_the_callers_future_and_rechecks_without_an_announcement(
        speech: SyncSpeech, jobs: JobStore, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    job_id = f"job_{unique}"
    await jobs.transition(job_id, JobStatus.queued, {"created_at": 1})
    segment: asyncio.Future[str] = loop.create_future()
    loop.call_later(0.2, segment.set_result, "a segment")
    started = loop.time()
    assert await speech.wait_for_end(job_id, loop.time() + 30, also=segment) is None
    assert segment.done() and loop.time() - started < 1.5
    # Nothing announced (e.g. the subscription dropped): the round ends after RECHECK_SECONDS, not at ``until``.
    monkeypatch.setattr(sync_module, "RECHECK_SECONDS", 0.3)
    started = loop.time()
    assert await speech.wait_for_end(job_id, loop.time() + 30) is None
    assert 0.25 < loop.time() - started < 2


async def test_past_until_it_raises_after_one_last_read(speech: SyncSpeech, jobs: JobStore, unique: str) -> None:
    loop = asyncio.get_running_loop()
    job_id = f"job_{unique}"
    await jobs.transition(job_id, JobStatus.queued, {"created_at": 1})
    with pytest.raises(TimeoutError):
        await speech.wait_for_end(job_id, loop.time() - 1)
    await jobs.transition(job_id, JobStatus.failed, {"error_code": "x", "completed_at": 2})
    record = await speech.wait_for_end(job_id, loop.time() - 1)  # the record is read before the deadline counts
    assert record is not None and record["status"] == "failed"
    # read=False (the caller has the terminal record): no read, so past ``until`` it only raises.
    with pytest.raises(TimeoutError):
        await speech.wait_for_end(job_id, loop.time() - 1, read=False)
