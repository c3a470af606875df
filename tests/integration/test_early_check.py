"""The early check against the real broker and Redis (issue 22, item 3): an overdue job whose result sits on the audio
topic unapplied is completed from it, one whose request was consumed without a result ends failed (result_lost), and
one whose request still waits behind the synthesis group's lag is left alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas.events import JobCompletion, SynthesisRequest, SynthesisResult
from schemas.topics import build_catalog
from stream_workers.completion.early_check import RESULT_LOST_CODE, EarlyCheck, Outcome, topic_facts
from stream_workers.completion.status import StatusProjector
from stream_workers.completion.storage import Storer
from voicenote.audio import to_wav
from voicenote.jobstore import JobStore
from voicenote.kafka import TopicPartition, consumer, ensure_topics, event_codecs, producer
from voicenote.models import synthesis_group
from voicenote.settings import Settings
from voicenote.storage.local import LocalAudioStore

pytestmark = pytest.mark.integration


def _request(job_id: str, created_at: int) -> SynthesisRequest:
    return SynthesisRequest(job_id=job_id, created_at=created_at, text="hello", format="wav", voice="joe", priority="batch",
                            webhook_url="https://hooks.example/in", batch_id=None)


def _result(job_id: str, created_at: int) -> SynthesisResult:
    tone = (0.2 * np.sin(np.linspace(0, 2 * np.pi * 440 * 0.2, int(22050 * 0.2)))).astype(np.float32)
    return SynthesisResult(job_id=job_id, status="succeeded", created_at=created_at, synthesized_at=created_at + 1000,
                           format="wav", audio=to_wav(tone, 22050), engine="null", model_version="tone-1", batch_size=1)


async def test_overdue_jobs_are_reapplied_failed_or_left_waiting(settings: Settings, jobs: JobStore, tmp_path: Path,
                                                                  unique: str) -> None:
    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=1, partitions=1)
    ensure_topics(settings.kafka, catalog.all())
    codecs = event_codecs(settings.kafka)
    now = int(time.time() * 1000)
    ago = now - 600_000  # ten minutes: past the 120 s floor
    unapplied, lost, lagging = f"job_{unique}_res", f"job_{unique}_lost", f"job_{unique}_lag"

    # Requests in this order on the one partition; the synthesis group committed past the first two only.
    out = producer(settings.kafka)
    for job_id in (unapplied, lost, lagging):
        out.produce(catalog.requests.name, codecs.request.encode_event(_request(job_id, ago)), key=job_id.encode())
    out.produce(catalog.audio.name, codecs.result.encode_event(_result(unapplied, ago)), key=unapplied.encode())
    assert out.flush(30) == 0
    group = synthesis_group(settings.worker.group_id, "piper")
    committer = consumer(settings.kafka, group, {"enable.auto.commit": False})
    try:
        committer.commit(offsets=[TopicPartition(catalog.requests.name, 0, 2)], asynchronous=False)
    finally:
        committer.close()

    projector = StatusProjector(jobs)
    await projector.on_requests([_request(j, ago) for j in (unapplied, lost, lagging)])
    emitted: list[JobCompletion] = []

    async def emit(records: Sequence[JobCompletion]) -> None:
        emitted.extend(records)

    storer = Storer(LocalAudioStore(tmp_path / "audio", ttl_seconds=3600), settings.storage,
                    public_base_url="http://127.0.0.1:8000/")

    async def reapply(results: Sequence[SynthesisResult]) -> None:  # the completion worker's path (CompletionHandler.reapply)
        done = await storer.complete_many(results)
        await emit(done)
        await projector.on_completions(done)

    def facts(job_ids: list[str]) -> Any:
        return topic_facts(settings.kafka, codecs, job_ids, request_topics={catalog.requests.name: group},
                           audio_topic=catalog.audio.name, completion_topic=catalog.completions.name, timeout=60)

    check = EarlyCheck(jobs, projector, emit, lambda ids: asyncio.to_thread(facts, ids), reapply,
                       factor=5, floor=120, stuck_after=7200)
    assert await check.sweep() == {unapplied: Outcome.reapplied, lost: Outcome.failed, lagging: Outcome.waiting}

    by_job = {c.job_id: c for c in emitted}
    assert set(by_job) == {unapplied, lost}
    assert by_job[unapplied].status == "succeeded" and by_job[unapplied].audio_key  # stored from the result's audio
    assert (by_job[lost].status, by_job[lost].error_code) == ("failed", RESULT_LOST_CODE)
    assert ((await jobs.get(unapplied)) or {})["status"] == "succeeded"
    lost_record = (await jobs.get(lost)) or {}
    assert (lost_record["status"], lost_record["error_code"]) == ("failed", RESULT_LOST_CODE)
    assert ((await jobs.get(lagging)) or {})["status"] == "queued"

    # Once: the finished ones are no longer indexed; the lagging one is examined again and still left.
    emitted.clear()
    assert await check.sweep() == {lagging: Outcome.waiting}
    assert emitted == []
