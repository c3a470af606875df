"""The synthesis worker's concurrency: read ahead, form batches, keep the engine busy, publish, ack.

Three kinds of task share one event loop:

- feed: takes request events from the source into a bounded intake queue (backpressure);
- admit: drains the intake in groups, runs decode -> validate -> filter (one Redis read per group)
  and puts the accepted jobs' segments into the batcher;
- engine: takes the next batch (window from its first item), runs it on the engine thread, and hands
  finished jobs to a publish task, so the next batch forms and runs while results are published.

A source event is acknowledged only once its result (or dead letter) is on the broker; the consumer
commits only acknowledged offsets, in order, so nothing is lost on a crash (at-least-once), and a
redelivered request whose result was already published is skipped at admission.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

from stream_workers.batching import Batcher, BatchPolicy, padding_waste
from stream_workers.metrics import SynthesisMetrics
from stream_workers.synthesis import Job, Refused, Segment, Synthesizer, now_ms

log = logging.getLogger(__name__)

H = TypeVar("H")  # the source event handle (a Faust event in the worker)

# Puts a group of result records on the broker: returns once every one is acknowledged.
Publish = Callable[[list[dict[str, Any]]], Awaitable[None]]


class SynthesisLoop(Generic[H]):
    def __init__(
        self,
        synth: Synthesizer,
        policy: BatchPolicy,
        *,
        publish: Publish,
        dead_letter: Callable[[H, Refused], Awaitable[None]],
        ack: Callable[[H], Awaitable[None]],
        executor: Executor,
        metrics: SynthesisMetrics | None = None,
        intake_size: int = 512,
        admit_group: int = 256,
        publishing: int = 8,
    ) -> None:
        self.synth = synth
        self.metrics = metrics or SynthesisMetrics()
        self._publish = publish
        self._dead_letter = dead_letter
        self._ack = ack
        self._executor = executor
        self._batcher: Batcher[Segment] = Batcher(policy)
        self._intake: asyncio.Queue[tuple[H, bytes | None]] = asyncio.Queue(intake_size)
        self._admit_group = admit_group
        # Bounds result groups in flight: backpressure on the engine loop, and no herd of senders
        # waking on every drained producer batch.
        self._publish_slots = asyncio.Semaphore(publishing)
        self._stopping = False
        self._in_engine = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._last_engine_end: float | None = None
        self.batches = 0

    async def run(self, source: AsyncIterator[tuple[H, bytes | None]]) -> None:
        """Run until :meth:`drain` completes; raises the first failure of any task (the worker crashes)."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            self._tasks["feed"] = group.create_task(self._feed(source))
            self._tasks["admit"] = group.create_task(self._admit_loop())
            self._tasks["engine"] = group.create_task(self._engine_loop())

    async def drain(self) -> None:
        """Stop taking requests, finish the batch in hand and publish it; unfinished jobs stay unacknowledged."""
        self._stopping = True
        for name in ("feed", "admit"):
            if name in self._tasks:
                self._tasks[name].cancel()
        engine = self._tasks.get("engine")
        if engine is not None and not self._in_engine:
            engine.cancel()
        log.info("draining: %d segments left unbatched (their requests are redelivered)", len(self._batcher))

    async def _feed(self, source: AsyncIterator[tuple[H, bytes | None]]) -> None:
        async for handle, value in source:
            await self._intake.put((handle, value))

    async def _admit_loop(self) -> None:
        while not self._stopping:
            group = [await self._intake.get()]
            while len(group) < self._admit_group and not self._intake.empty():
                group.append(self._intake.get_nowait())
            admission = await self.synth.admit([value for _, value in group])
            handles = [handle for handle, _ in group]
            for refused in admission.refused:
                await self._dead_letter(handles[refused.index], refused)
                await self._ack(handles[refused.index])
                self.metrics.dead_letters.inc()
            for i in admission.skipped:
                await self._ack(handles[i])
                self.metrics.skipped.inc()
            if admission.results:
                await self._spawn_publish([(handles[i], record) for i, record in admission.results])
            for i, job in admission.jobs:
                job.handle = handles[i]
                for segment in job.segments():
                    self._batcher.add(segment, len(segment.text))

    async def _engine_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            segments, waited = await self._batcher.next_batch()
            self._in_engine = True  # from here on a drain lets this batch finish (no await before the engine)
            segments = await self._drop_expired(segments)
            if not segments:
                self._in_engine = False
                continue
            started = time.monotonic()
            if self._last_engine_end is not None:
                self.metrics.idle(started - self._last_engine_end)
            wall_ms = now_ms()
            for segment in segments:
                job = segment.job
                job.started_ms = job.started_ms or wall_ms
                job.batch_wait_ms = max(job.batch_wait_ms, int(waited * 1000))
            try:
                results = await loop.run_in_executor(self._executor, self.synth.run_batch, segments)
            finally:
                self._last_engine_end = time.monotonic()
            engine_seconds = self._last_engine_end - started
            self.batches += 1
            audio_seconds = sum(len(r.audio) / r.sample_rate for r in results if r.ok and r.audio is not None and r.sample_rate)
            waste = padding_waste([len(s.text) for s in segments])
            self.metrics.batch(len(segments), waited, engine_seconds, audio_seconds, waste)
            finished: dict[int, Job] = {}
            for segment in segments:
                job = segment.job
                job.batch_sizes.append(len(segments))
                job.engine_ms += int(engine_seconds * 1000)
                if job.done:
                    finished[id(job)] = job
            if finished:
                if any(job.error is not None for job in finished.values()):
                    # a failed job's other segments need no engine time
                    self._batcher.remove(lambda s, done=finished: id(s.job) not in done)
                await self._spawn_finish(list(finished.values()))
            self._in_engine = False

    async def _drop_expired(self, segments: list[Segment]) -> list[Segment]:
        now = now_ms()
        expired = {id(s.job): s.job for s in segments if s.job.past_deadline(now) and s.job.error is None}
        if not expired:
            return segments
        self._batcher.remove(lambda s: id(s.job) not in expired)
        await self._spawn_publish([(job.handle, self.synth.deadline_result(job.request)) for job in expired.values()])
        return [s for s in segments if id(s.job) not in expired]

    async def _spawn_finish(self, jobs: list[Job]) -> None:
        async def finish_and_publish() -> None:
            records = [await self.synth.finish(job) for job in jobs]
            await self._publish_acked([(job.handle, record) for job, record in zip(jobs, records, strict=True)])

        await self._spawn(finish_and_publish)

    async def _spawn_publish(self, items: list[tuple[H, dict[str, Any]]]) -> None:
        await self._spawn(lambda: self._publish_acked(items))

    async def _spawn(self, work: Callable[[], Awaitable[None]]) -> None:
        assert self._group is not None
        await self._publish_slots.acquire()

        async def run() -> None:
            try:
                await work()
            finally:
                self._publish_slots.release()

        # Publishing runs beside the engine; a failure here still fails the whole loop (TaskGroup).
        self._group.create_task(run())

    async def _publish_acked(self, items: list[tuple[H, dict[str, Any]]]) -> None:
        await self._publish([record for _, record in items])
        await self.synth.mark_synthesized([record["job_id"] for _, record in items])
        for handle, record in items:
            await self._ack(handle)
            self.metrics.results.labels(record["status"]).inc()
