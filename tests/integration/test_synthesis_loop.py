"""The synthesis loop against real Redis: poisoned items, cancelled, expired and redelivered jobs,
and a drain that finishes the batch in hand. Publishing is captured in-process here; the worker
tests in tests/e2e run the same loop against the broker."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest

from schemas.codec import Codecs
from schemas.events import SpeechSegment
from schemas.events import SynthesisResult as SynthesisResultEvent
from schemas.status import JobStatus
from stream_workers.engine.base import ContinuousEngine, SynthesisInput, SynthesisResult
from stream_workers.engine.null_engine import NullEngine
from stream_workers.engine.slots import continuous
from stream_workers.runtime.acks import InOrderAcks
from stream_workers.synthesis.batching import BatchPolicy
from stream_workers.synthesis.loop import SynthesisLoop
from stream_workers.synthesis.synthesizer import SYNTHESIZED_FIELD, Refused, Synthesizer
from voicenote.jobstore import JobStore
from voicenote.settings import Settings, SynthesisSettings
from voicenote.storage.local import LocalAudioStore

pytestmark = pytest.mark.integration


def request(job_id: str, text: str, **fields: Any) -> dict[str, Any]:
    return {"job_id": job_id, "created_at": int(time.time() * 1000), "text": text, "voice": "default", "format": "wav",
            "speed": 1.0, "model": "default", "temperature": None, "top_p": None, "repetition_penalty": None, "seed": None,
            "instructions": None, "webhook_url": None, "priority": "batch", "deadline_at": None, "batch_id": None,
            "trace_parent": None, "attributes": {}, **fields}


class SlowEngine(NullEngine):
    """The null engine with a per-batch cost, recording the batches it saw."""

    def __init__(self, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(sample_rate=8000, seconds=0.05, **kwargs)
        self.delay = delay
        self.batches: list[list[str]] = []
        self.started = asyncio.Event()

    def synthesize_batch(self, inputs: Sequence[SynthesisInput]) -> list[SynthesisResult]:
        self.batches.append([i.job_id for i in inputs])
        time.sleep(self.delay)
        return super().synthesize_batch(inputs)


class ManualEngine(ContinuousEngine):
    """A continuous engine whose rows finish when the test says so (no timing involved)."""

    name = "manual"
    model_version = "1"
    sample_rate = 8000

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.rows: dict[str, Future[SynthesisResult]] = {}
        self.groups: list[list[str]] = []

    def voices(self) -> list[str]:
        return ["default"]

    def free_slots(self) -> int:
        return self.slots - sum(1 for f in self.rows.values() if not f.done())

    def submit(self, inputs: Sequence[SynthesisInput]) -> list[Future[SynthesisResult]]:
        futures: list[Future[SynthesisResult]] = [Future() for _ in inputs]
        self.rows.update({i.job_id: f for i, f in zip(inputs, futures, strict=True)})
        self.groups.append([i.job_id for i in inputs])
        return futures

    def finish(self, row: str) -> None:
        self.rows[row].set_result(SynthesisResult(row, self.sample_rate, audio=np.zeros(400, dtype=np.float32)))

    async def wait_rows(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.rows) < count:
            assert time.monotonic() < deadline, f"only {len(self.rows)} of {count} rows submitted: {self.groups}"
            await asyncio.sleep(0.01)

    def close(self) -> None:
        pass


class Harness:
    def __init__(self, settings: Settings, engine: SlowEngine | ManualEngine, jobs: JobStore | None, *,
                 max_segment_chars: int = 300, policy: BatchPolicy | None = None, in_order: bool = False) -> None:
        self.codecs = Codecs()
        self.published: list[SynthesisResultEvent] = []
        self.acked: list[int] = []
        self.dead: list[tuple[int, Refused]] = []
        self.segments: list[dict[str, Any]] = []
        # With in_order, acknowledgements go through the worker's per-partition tracker (one partition here).
        self.in_order: InOrderAcks[int] | None = InOrderAcks(lambda handle: 0) if in_order else None
        synth = Synthesizer(engine, self.codecs, LocalAudioStore(settings.storage.local_dir), settings.storage,  # type: ignore[arg-type]
                            SynthesisSettings(max_segment_chars=max_segment_chars), jobs)
        self.engine = continuous(engine, 4)
        self.loop: SynthesisLoop[int] = SynthesisLoop(
            synth, policy or BatchPolicy(max_batch=4, window=0.05), engine=self.engine, publish=self._publish,
            dead_letter=self._dead, ack=self._ack, publish_segment=self._segment)
        self.queue: asyncio.Queue[tuple[int, bytes | None]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self._n = 0

    async def _publish(self, records: list[SynthesisResultEvent]) -> None:
        self.published.extend(records)

    async def _segment(self, record: SpeechSegment) -> None:
        self.codecs.segment.encode_event(record)  # what the worker sends must encode
        self.segments.append(record)

    async def _dead(self, handle: int, refused: Refused) -> None:
        self.dead.append((handle, refused))

    async def _ack(self, handle: int) -> None:
        if self.in_order is None:
            self.acked.append(handle)
        else:
            self.acked.extend(self.in_order.done(handle))

    async def _source(self) -> AsyncIterator[tuple[int, bytes | None]]:
        while True:
            yield await self.queue.get()

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.loop.run(self._source()))

    def send(self, value: bytes | None) -> int:
        self._n += 1
        if self.in_order is not None:
            self.in_order.register(self._n)
        self.queue.put_nowait((self._n, value))
        return self._n

    def send_request(self, job_id: str, text: str, **fields: Any) -> int:
        return self.send(self.codecs.request.encode(request(job_id, text, **fields)))

    async def wait_published(self, job_id: str, timeout: float = 30) -> SynthesisResultEvent:
        deadline = time.monotonic() + timeout
        while not any(r.job_id == job_id for r in self.published):
            assert self.task is not None
            if self.task.done():
                self.task.result()
            assert time.monotonic() < deadline, f"{job_id} never published"
            await asyncio.sleep(0.01)
        return next(r for r in self.published if r.job_id == job_id)

    async def wait_acked(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert self.task is not None
            if self.task.done():
                self.task.result()
            assert time.monotonic() < deadline, f"only {len(self.acked)} of {count} acknowledged"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        await self.loop.drain()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)
        await asyncio.to_thread(self.engine.close)

    def by_job(self) -> dict[str, SynthesisResultEvent]:
        out: dict[str, SynthesisResultEvent] = {}
        for record in self.published:
            assert record.job_id not in out, f"{record.job_id} published twice"
            out[record.job_id] = record
        return out


async def test_one_poisoned_item_fails_alone_and_its_batch_mates_succeed(settings: Settings, jobs: JobStore) -> None:
    engine = SlowEngine(fail_marker="POISON")
    h = Harness(settings, engine, jobs)
    h.start()
    for i in range(4):
        h.send_request(f"ok{i}" if i != 2 else "bad", "Say POISON now." if i == 2 else f"Item number {i}.")
    await h.wait_acked(4)
    await h.stop()
    results = h.by_job()
    assert {k: v.status for k, v in results.items()} == {"ok0": "succeeded", "ok1": "succeeded", "ok3": "succeeded", "bad": "failed"}
    assert results["bad"].error_code == "test_poison"
    assert engine.batches[0] == ["ok0#0", "ok1#0", "bad#0", "ok3#0"]  # one real batch of four
    for job_id in ("ok0", "ok1", "ok3"):
        with wave.open(io.BytesIO(results[job_id].audio)) as w:
            assert w.getnframes() == 400
    record = await jobs.get("ok0")
    assert record is not None and record[SYNTHESIZED_FIELD]


async def test_undecodable_is_dead_lettered_cancelled_skipped_expired_failed_done_not_redone(settings: Settings, jobs: JobStore) -> None:
    engine = SlowEngine()
    h = Harness(settings, engine, jobs)
    await jobs.transition("cancelled1", JobStatus.cancelled)
    await jobs.transition("finished1", JobStatus.succeeded)
    h.start()
    garbage = h.send(b"\x00not avro")
    h.send_request("cancelled1", "Never mind.")
    h.send_request("finished1", "A redelivery of a finished job.")
    h.send_request("late1", "Too late.", deadline_at=int(time.time() * 1000) - 1000)
    h.send_request("fine1", "On time.", deadline_at=int(time.time() * 1000) + 600_000)
    await h.wait_acked(5)
    await h.stop()
    assert [handle for handle, _ in h.dead] == [garbage]
    results = h.by_job()
    assert set(results) == {"cancelled1", "late1", "fine1"}  # finished1 is acknowledged without a result
    assert results["cancelled1"].status == "cancelled"
    assert results["late1"].status == "failed" and results["late1"].error_code == "deadline_exceeded"
    assert results["fine1"].status == "succeeded"
    assert [b for batch in engine.batches for b in batch] == ["fine1#0"]

    # A redelivery of the published job (say the worker died before committing) is not synthesized again.
    h2 = Harness(settings, engine, jobs)
    h2.start()
    h2.send_request("fine1", "On time.")
    await h2.wait_acked(1)
    await h2.stop()
    assert h2.published == []
    assert [b for batch in engine.batches for b in batch] == ["fine1#0"]


async def test_a_long_note_is_segmented_and_joined_in_order(settings: Settings, jobs: JobStore) -> None:
    engine = SlowEngine()
    h = Harness(settings, engine, jobs, max_segment_chars=41)  # two 20-character sentences a segment
    h.start()
    text = " ".join(f"Sentence {i} is short." for i in range(10))
    h.send_request("long1", text)
    h.send_request("short1", "Hi.")
    await h.wait_acked(2)
    await h.stop()
    results = h.by_job()
    items = [b for batch in engine.batches for b in batch]
    assert sorted(i for i in items if i.startswith("long1#")) == sorted(f"long1#{i}" for i in range(5))
    # Four equal segments batch together; the short note waits for one batch of bounded segments, not
    # for a ten-sentence item, and rides with the last one.
    assert engine.batches == [["long1#0", "long1#1", "long1#2", "long1#3"], ["long1#4", "short1#0"]]
    with wave.open(io.BytesIO(results["long1"].audio)) as w:
        assert w.getnframes() == 5 * 400 + 4 * int(8000 * 0.06)  # five segments and four pauses


async def test_drain_finishes_what_is_in_the_engine_and_leaves_the_rest_unacknowledged(settings: Settings, jobs: JobStore) -> None:
    engine = SlowEngine(delay=1.0)
    h = Harness(settings, engine, jobs)
    h.start()
    handles = [h.send_request(f"d{i}", f"Drain item {i}.") for i in range(12)]
    deadline = time.monotonic() + 30
    while not engine.batches and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert engine.batches, "the engine never started"
    # The first batch is running; the adapter holds the next one (read ahead while the first runs).
    while h.engine.free_slots() > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await h.stop()
    in_engine = {b.split("#")[0] for batch in engine.batches for b in batch}
    assert len(engine.batches) == 2 and len(in_engine) == 8
    assert {r.job_id for r in h.published} == in_engine
    acked_jobs = {f"d{handles.index(a)}" for a in h.acked}
    assert acked_jobs == in_engine  # the other four are redelivered after the restart, nothing lost


async def test_a_lone_request_starts_at_once_without_waiting_out_the_window(settings: Settings, jobs: JobStore) -> None:
    engine = SlowEngine()
    h = Harness(settings, engine, jobs, policy=BatchPolicy(max_batch=4, window=3600.0))  # a window no test outlasts
    h.start()
    h.send_request("lone", "Nobody else is here.")
    await h.wait_acked(1)
    result = h.by_job()["lone"]
    await h.stop()
    assert result.status == "succeeded" and result.batch_size == 1  # and acknowledged long before the window closed


async def test_a_busy_engine_gathers_arrivals_into_one_group(settings: Settings) -> None:
    engine = ManualEngine(slots=8)
    h = Harness(settings, engine, None, policy=BatchPolicy(max_batch=4, window=3600.0))
    h.start()
    h.send_request("first", "I start alone.")
    await engine.wait_rows(1)
    for i in range(4):
        h.send_request(f"next{i}", f"Arriving while the engine is busy {i}.")
    await engine.wait_rows(5)
    assert engine.groups == [["first#0"], [f"next{i}#0" for i in range(4)]]  # closed by max_batch, not one by one
    for row in list(engine.rows):
        engine.finish(row)
    await h.wait_acked(5)
    await h.stop()


async def test_a_job_finishes_while_a_longer_group_mate_is_still_decoding(settings: Settings) -> None:
    engine = ManualEngine(slots=8)
    h = Harness(settings, engine, None, policy=BatchPolicy(max_batch=4, window=0.0))
    h.start()
    h.send_request("long", "A long note that takes many decode steps.")
    h.send_request("short", "Hi.")
    await engine.wait_rows(2)
    engine.finish("short#0")
    assert (await h.wait_published("short")).status == "succeeded"
    assert [r.job_id for r in h.published] == ["short"]  # the long one is still decoding
    engine.finish("long#0")
    await h.wait_published("long")
    await h.stop()


async def test_acknowledgements_stay_in_offset_order_when_jobs_finish_out_of_order(settings: Settings) -> None:
    engine = ManualEngine(slots=8)
    h = Harness(settings, engine, None, policy=BatchPolicy(max_batch=4, window=0.0), in_order=True)
    h.start()
    handles = [h.send_request(job_id, f"Note {job_id}.") for job_id in ("a", "b", "c")]
    await engine.wait_rows(3)
    engine.finish("c#0")
    engine.finish("b#0")
    await h.wait_published("b")
    await h.wait_published("c")
    assert h.acked == []  # b and c are published, but a (the lowest offset) is not: nothing is committable
    engine.finish("a#0")
    await h.wait_acked(3)
    assert h.acked == handles
    await h.stop()


async def test_interactive_requests_take_scarce_slots_before_bulk_ones(settings: Settings) -> None:
    engine = ManualEngine(slots=1)
    h = Harness(settings, engine, None, policy=BatchPolicy(max_batch=4, window=0.0, bulk_delay=3600.0))
    h.start()
    h.send_request("bulk0", "Bulk work holds the only slot.")
    await engine.wait_rows(1)
    h.send_request("bulk1", "Older bulk.", priority="batch")
    h.send_request("bulk2", "Older bulk too.", priority="batch")
    h.send_request("live1", "A caller is waiting.", priority="interactive")
    while h.loop.waiting < 3:  # the three wait for the slot
        await asyncio.sleep(0.01)
    for expected in (2, 3, 4):
        engine.finish(engine.groups[-1][0])
        await engine.wait_rows(expected)
    engine.finish(engine.groups[-1][0])
    assert engine.groups == [["bulk0#0"], ["live1#0"], ["bulk1#0"], ["bulk2#0"]]
    await h.wait_acked(4)
    await h.stop()


async def test_drain_waits_for_rows_in_a_continuous_engine_and_publishes_them(settings: Settings) -> None:
    engine = ManualEngine(slots=2)
    h = Harness(settings, engine, None, policy=BatchPolicy(max_batch=4, window=0.0))
    h.start()
    handles = [h.send_request(f"r{i}", f"Row {i}.") for i in range(4)]
    await engine.wait_rows(2)  # two in the slots, two waiting for one
    stopping = asyncio.ensure_future(h.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # the drain waits for the rows in the engine
    engine.finish("r0#0")
    engine.finish("r1#0")
    await asyncio.wait_for(stopping, 30)
    assert sorted(r.job_id for r in h.published) == ["r0", "r1"]
    assert sorted(h.acked) == handles[:2]  # r2 and r3 were never in the engine: redelivered
    assert len(engine.rows) == 2


async def test_a_streaming_job_publishes_its_segments_in_order_as_they_finish(settings: Settings) -> None:
    engine = ManualEngine(slots=8)
    h = Harness(settings, engine, None, max_segment_chars=41, policy=BatchPolicy(max_batch=8, window=0.0))
    h.start()
    text = " ".join(f"Sentence {i} is short." for i in range(6))  # three segments
    h.send_request("streamed", text, attributes={"stream": "true"})
    h.send_request("plain", text)
    await engine.wait_rows(6)
    # The streaming job's first segment went to the engine alone, its others after it; the plain job's together.
    streamed_groups = [[r for r in g if r.startswith("streamed#")] for g in engine.groups]
    assert [g for g in streamed_groups if g][0] == ["streamed#0"]
    assert any(g == ["plain#0", "plain#1", "plain#2"] for g in ([r for r in g if r.startswith("plain#")] for g in engine.groups))
    waves = {i: np.full(400, 0.1 * (i + 1), dtype=np.float32) for i in range(3)}

    def finish(row: str, i: int) -> None:
        engine.rows[row].set_result(SynthesisResult(row, engine.sample_rate, audio=waves[i]))

    finish("streamed#2", 2)
    finish("streamed#1", 1)
    for _ in range(5):
        await asyncio.sleep(0)
    assert h.segments == []  # segment 0 is missing: the later ones wait for it
    finish("streamed#0", 0)
    result = await h.wait_published("streamed")
    for i in range(3):
        finish(f"plain#{i}", i)
    await h.wait_published("plain")
    await h.stop()
    assert [(s.job_id, s.index, s.count) for s in h.segments] == [("streamed", i, 3) for i in range(3)]
    with wave.open(io.BytesIO(result.audio)) as w:
        stored = w.readframes(w.getnframes())
    # The segments are the pieces of the joined audio: concatenated, they are the stored file's samples.
    assert b"".join(s.pcm for s in h.segments) == stored


async def test_a_jobs_batch_wait_is_its_own_and_never_longer_than_its_life(settings: Settings) -> None:
    """Issue 25, defect 6: a job reported the wait of the oldest segment anywhere in the batcher (here a bulk job
    waiting out its bulk_delay), more than its own life. Now: its own segments' wait, within its life."""
    engine = ManualEngine(slots=1)
    h = Harness(settings, engine, None, policy=BatchPolicy(max_batch=4, window=0.0, bulk_delay=3600.0))
    h.start()
    h.send_request("bulk0", "Bulk work holds the only slot.")
    await engine.wait_rows(1)
    h.send_request("bulk1", "Bulk work waiting for the slot.")
    while h.loop.waiting < 1:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.6)  # bulk1 has waited 0.6 s when the interactive job arrives
    h.send_request("live1", "A caller is waiting.", priority="interactive")
    while h.loop.waiting < 2:
        await asyncio.sleep(0.01)
    engine.finish("bulk0#0")
    await engine.wait_rows(2)
    assert engine.groups[1] == ["live1#0"]  # the interactive job went first, alone
    engine.finish("live1#0")
    live = await h.wait_published("live1")
    life_ms = live.synthesized_at - live.created_at  # both on this host's wall clock in this test
    assert live.batch_wait_ms <= life_ms, f"batch wait {live.batch_wait_ms} ms > the job's life {life_ms} ms"
    assert live.batch_wait_ms < 500  # its own wait (a few ms), not bulk1's (600 ms and more)
    engine.finish(await _next_row(engine, 3))
    bulk = await h.wait_published("bulk1")
    assert 600 <= bulk.batch_wait_ms <= bulk.synthesized_at - bulk.created_at
    await h.stop()


async def _next_row(engine: ManualEngine, count: int) -> str:
    await engine.wait_rows(count)
    return engine.groups[-1][0]
