"""The completion role's consumers called directly, without Faust (issue 20): results in, stored audio, one completion
per job and its projection out, on the real Redis and a local audio store. The sends are the handler's output port:
each returns the broker's acknowledgement to await, which the test holds back to see the order of the steps."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from schemas.errors import DecodeError
from schemas.events import JobCompletion, SynthesisRequest, SynthesisResult
from stream_workers.completion.handler import CompletionHandler
from stream_workers.completion.status import StatusProjector
from stream_workers.completion.storage import Storer
from voicenote.audio import to_wav
from voicenote.jobstore import JobStore
from voicenote.kafka import event_codecs
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


class Outbox:
    """What the handler sent; each send's acknowledgement is a future the test resolves (``ack_all``)."""

    def __init__(self) -> None:
        self.completions: list[JobCompletion] = []
        self.dead: list[tuple[Any, str, DecodeError]] = []
        self.acks: list[asyncio.Future[None]] = []

    def _ack(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(fut)
        return fut

    async def send_completion(self, completion: JobCompletion) -> asyncio.Future[None]:
        self.completions.append(completion)
        return self._ack()

    async def send_dead_letter(self, event: Any, consumer: str, exc: DecodeError) -> asyncio.Future[None]:
        self.dead.append((event, consumer, exc))
        return self._ack()

    def ack_all(self) -> None:
        for fut in self.acks:
            if not fut.done():
                fut.set_result(None)


def _handler(settings: Settings, jobs: JobStore, store: LocalAudioStore, outbox: Outbox) -> CompletionHandler:
    storer = Storer(store, settings.storage)
    return CompletionHandler(event_codecs(settings.kafka), storer, StatusProjector(jobs), outbox.send_completion,
                             outbox.send_dead_letter)


async def test_storage_stores_emits_once_per_job_and_projects_only_once_acknowledged(
        settings: Settings, jobs: JobStore, tmp_path: Path, unique: str) -> None:
    outbox, store = Outbox(), LocalAudioStore(tmp_path / "audio", ttl_seconds=3600)
    handler = _handler(settings, jobs, store, outbox)
    codecs = event_codecs(settings.kafka)
    now = int(time.time() * 1000)
    fresh, done_before = f"job_{unique}_a", f"job_{unique}_b"
    await handler.projector.on_requests([_request(fresh, now), _request(done_before, now)])
    await handler.projector.on_completions([JobCompletion(job_id=done_before, status="succeeded", created_at=now,
                                                          completed_at=now)])
    garbage = SimpleNamespace(value=b"not an event")
    events = [SimpleNamespace(value=codecs.result.encode_event(_result(fresh, now))),
              SimpleNamespace(value=codecs.result.encode_event(_result(fresh, now))),  # a redelivered result: one completion
              SimpleNamespace(value=codecs.result.encode_event(_result(done_before, now))),  # completed already: dropped
              garbage]

    storing = asyncio.create_task(handler.storage(events))
    while len(outbox.acks) < 2:  # the dead letter and the one completion, queued with the producer
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert not storing.done()  # waits for the broker's acknowledgements
    assert ((await jobs.get(fresh)) or {})["status"] == "queued"  # not finished before its completion event exists
    outbox.ack_all()
    done = await storing

    assert [c.job_id for c in done] == [c.job_id for c in outbox.completions] == [fresh]
    [completion] = done
    assert completion.status == "succeeded" and completion.audio_key
    assert await store.exists(completion.audio_key)  # the audio is stored under the job's key
    record = (await jobs.get(fresh)) or {}
    assert (record["status"], record["audio_key"]) == ("succeeded", completion.audio_key)
    [(event, consumer, exc)] = outbox.dead
    assert (event, consumer) == (garbage, "storage") and isinstance(exc, DecodeError)
    assert handler.metrics.dead_letters._value.get() == 1

    # The same group again (a redelivery after a crash past the sends): nothing new is emitted.
    assert await handler.storage(events[:3]) == []
    assert len(outbox.completions) == 1


async def test_status_projects_requests_as_queued_and_leaves_dead_letters_to_the_synthesis_group(
        settings: Settings, jobs: JobStore, tmp_path: Path, unique: str) -> None:
    outbox = Outbox()
    handler = _handler(settings, jobs, LocalAudioStore(tmp_path / "audio"), outbox)
    codecs = event_codecs(settings.kafka)
    now = int(time.time() * 1000)
    job_id = f"job_{unique}_q"
    events = [SimpleNamespace(value=codecs.request.encode_event(_request(job_id, now))), SimpleNamespace(value=b"junk")]

    assert [r.job_id for r in await handler.status(events)] == [job_id]
    record = (await jobs.get(job_id)) or {}
    assert (record["status"], record["voice"]) == ("queued", "joe")
    assert await jobs.pending_before(now + 1, 10) == [job_id]  # indexed for the watchdog
    assert outbox.dead == [] and outbox.completions == []
