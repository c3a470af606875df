"""The synthesis worker's concurrency: read ahead, admit into the engine's slots, publish, ack.

Four kinds of task share one event loop:

- feed: takes request events from the source into a bounded intake queue (backpressure);
- admit: drains the intake in groups, runs decode -> validate -> filter (one Redis read per group)
  and puts the accepted jobs' segments into the batcher, each in its priority lane;
- engine: while the engine has free slots, takes the next group from the batcher (at once when the
  engine is idle, else when the group fills or the window of its oldest item closes) and submits it to
  the :class:`ContinuousEngine`; several groups are in the engine at once, bounded by its slots;
- collect: takes each segment's result as the engine resolves it and hands a job to a publish task
  as soon as its own segments are done, not when its group-mates are.

A source event is acknowledged only once its result (or dead letter) is on the broker; the consumer
commits only acknowledged offsets, in order (acks.py), so nothing is lost on a crash (at-least-once),
and a redelivered request whose result was already published is skipped at admission.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, TypeVar

from schemas.clock import now_ms
from schemas.events import SpeechSegment
from schemas.events import SynthesisResult as SynthesisResultEvent
from stream_workers.engine.base import ContinuousEngine, SynthesisResult
from stream_workers.runtime.metrics import SynthesisMetrics
from stream_workers.synthesis.batching import Batcher, BatchPolicy, padding_waste
from stream_workers.synthesis.synthesizer import Job, Refused, Segment, Synthesizer, Timing

log = logging.getLogger(__name__)

H = TypeVar("H")  # the source event handle (a Faust event in the worker)

# Puts a group of result records on the broker: returns once every one is acknowledged.
Publish = Callable[[list[SynthesisResultEvent]], Awaitable[None]]
# Queues one SpeechSegment record with the producer (in call order); need not wait for the broker.
PublishSegment = Callable[[SpeechSegment], Awaitable[None]]

INTERACTIVE = "interactive"


@dataclass(eq=False)
class _Flight(Generic[H]):
    """The loop's own state of one job in flight; the job itself (request, segment outcomes) is the synthesizer's."""

    job: Job
    handle: H  # the source event, acknowledged once the result is published
    started_ms: int = 0
    batch_wait_ms: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    engine_ms: int = 0
    finished: bool = False  # its result is on its way: results of its segments still in the engine are dropped
    emitted: int = 0  # streaming: how many leading segments are on the segments topic
    held: list[_Item[H]] = field(default_factory=list)  # streaming: segments admitted once the first one is in the engine

    @property
    def interactive(self) -> bool:
        return self.job.request.priority == INTERACTIVE

    def timing(self) -> Timing:
        return Timing(batch_size=max(self.batch_sizes, default=0), started_ms=self.started_ms,
                      batch_wait_ms=self.batch_wait_ms, engine_ms=self.engine_ms)


@dataclass(eq=False)  # identity: the batcher's waits are keyed by item
class _Item(Generic[H]):
    """One segment in the batcher, with the flight of its job."""

    segment: Segment
    flight: _Flight[H]


@dataclass
class _Group:
    """One submission to the engine, for its metrics once its last row is done."""

    size: int
    waited: float
    waste: float
    submitted: float
    left: int
    audio_seconds: float = 0.0


class SynthesisLoop(Generic[H]):
    def __init__(
        self,
        synth: Synthesizer,
        policy: BatchPolicy,
        *,
        engine: ContinuousEngine,
        publish: Publish,
        dead_letter: Callable[[H, Refused], Awaitable[None]],
        ack: Callable[[H], Awaitable[None]],
        metrics: SynthesisMetrics | None = None,
        intake_size: int = 512,
        admit_group: int = 256,
        publishing: int = 8,
        publish_segment: PublishSegment | None = None,
    ) -> None:
        self.synth = synth
        self.engine = engine
        self.metrics = metrics or SynthesisMetrics()
        self._publish = publish
        self._publish_segment = publish_segment
        self._dead_letter = dead_letter
        self._ack = ack
        self._batcher: Batcher[_Item[H]] = Batcher(policy)
        self._intake: asyncio.Queue[tuple[H, bytes | None]] = asyncio.Queue(intake_size)
        self._admit_group = admit_group
        # Bounds result groups in flight: backpressure on the collector, and no herd of senders
        # waking on every drained producer batch.
        self._publish_slots = asyncio.Semaphore(publishing)
        self._stopping = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._in_flight = 0  # segments submitted whose results the collector has not taken yet
        # Results the engine resolved, appended from its thread, taken by the collector.
        self._incoming: list[tuple[_Item[H], _Group, Future[SynthesisResult]]] = []
        self._incoming_lock = threading.Lock()
        self._wakeup_pending = False
        self._results_ready = asyncio.Event()
        self._slots_changed = asyncio.Event()
        self._busy_since: float | None = None
        self._idle_since: float | None = None
        self.batches = 0

    @property
    def waiting(self) -> int:
        """Segments admitted and waiting for a slot in the engine."""
        return len(self._batcher)

    async def run(self, source: AsyncIterator[tuple[H, bytes | None]]) -> None:
        """Run until :meth:`drain` completes; raises the first failure of any task (the worker crashes)."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            self._tasks["feed"] = group.create_task(self._feed(source))
            self._tasks["admit"] = group.create_task(self._admit_loop())
            self._tasks["engine"] = group.create_task(self._engine_loop())
            self._tasks["collect"] = group.create_task(self._collect_loop())

    async def drain(self) -> None:
        """Stop taking requests, let the engine finish what it holds and publish it; jobs not finished
        stay unacknowledged (redelivered to the partition's next owner)."""
        self._stopping = True
        for name in ("feed", "admit", "engine"):
            if name in self._tasks:
                self._tasks[name].cancel()
        self._results_ready.set()
        log.info("draining: %d segments in the engine finish; %d waiting are left (their requests are redelivered)",
                 self._in_flight, len(self._batcher))

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
                flight = _Flight(job, handles[i])
                items = [_Item(segment, flight) for segment in job.segments()]
                if job.streaming and self._publish_segment is not None and len(items) > 1:
                    # The first segment alone: batched with the others it would wait for the longest of
                    # them. The rest follow once it is in the engine (see _submit).
                    items, flight.held = items[:1], items[1:]
                for item in items:
                    self._batcher.add(item, len(item.segment.text), interactive=flight.interactive)

    def _idle(self) -> bool:
        return self._in_flight == 0

    async def _engine_loop(self) -> None:
        while not self._stopping:
            while self.engine.free_slots() <= 0:  # back-pressure: the engine's slots are full
                self._slots_changed.clear()
                await self._slots_changed.wait()
            timed = await self._batcher.next_timed(self.engine.free_slots, self._idle)
            waits = dict(timed)  # by item (identity): each one's own wait in the batcher
            items = await self._drop_expired([item for item, _ in timed])
            if items:
                self._submit(items, waits)

    def _submit(self, items: list[_Item[H]], waits: Mapping[_Item[H], float]) -> None:
        """Hand a group to the engine (no await: a drain never leaves a group half submitted). ``waits``: how long
        each segment waited in the batcher (seconds, on its monotonic clock)."""
        now = time.monotonic()
        waited = max(waits[item] for item in items)  # the group's: its oldest member's (metrics)
        if self._in_flight == 0:
            if self._idle_since is not None:
                self.metrics.idle(now - self._idle_since)
            self._busy_since = now
        wall_ms = now_ms()
        for item in items:
            flight = item.flight
            flight.started_ms = flight.started_ms or wall_ms
            # The job's batch wait: the longest its own segments waited, on one clock (the batcher's monotonic one,
            # from each segment's add to now). It was the group's "oldest item in the pool" wait, which could belong to
            # another job that came long before this one: 196 s of wait reported for a job that lived 72 s.
            flight.batch_wait_ms = max(flight.batch_wait_ms, int(waits[item] * 1000))
            flight.batch_sizes.append(len(items))
        futures = self.engine.submit([item.segment.to_input() for item in items])
        for item in items:
            if item.flight.held:
                held, item.flight.held = item.flight.held, []
                for rest in held:
                    self._batcher.add(rest, len(rest.segment.text), interactive=rest.flight.interactive)
        group = _Group(len(items), waited, padding_waste([len(item.segment.text) for item in items]), now, len(items))
        self._in_flight += len(items)
        self.batches += 1
        loop = asyncio.get_running_loop()
        for item, future in zip(items, futures, strict=True):
            # Futures resolve on the engine's thread; the results are taken on the loop, in bursts.
            future.add_done_callback(partial(self._resolved_from_engine, loop, item, group))

    def _resolved_from_engine(self, loop: asyncio.AbstractEventLoop, item: _Item[H], group: _Group,
                              future: Future[SynthesisResult]) -> None:
        # Runs on the engine's thread. One wake-up per burst of results, not one per row: each wake-up is
        # a write to the loop's self-pipe and a fight for the GIL, and a batch resolves its rows together.
        with self._incoming_lock:
            self._incoming.append((item, group, future))
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        loop.call_soon_threadsafe(self._results_ready.set)

    async def _collect_loop(self) -> None:
        while True:
            with self._incoming_lock:
                resolved, self._incoming = self._incoming, []
                self._wakeup_pending = False
            if not resolved:
                if self._stopping and self._in_flight == 0:
                    return
                self._results_ready.clear()
                await self._results_ready.wait()
                continue
            finished: list[_Flight[H]] = []
            now = time.monotonic()
            for item, group, future in resolved:
                self._in_flight -= 1
                result = future.result()  # an engine that raises instead of failing the row crashes the worker
                group.left -= 1
                if result.ok and result.audio is not None and result.sample_rate:
                    group.audio_seconds += len(result.audio) / result.sample_rate
                if group.left == 0:
                    self.metrics.batch(group.size, group.waited, now - group.submitted, group.audio_seconds, group.waste)
                flight, job = item.flight, item.flight.job
                if flight.finished:
                    continue  # failed or expired already, result out
                self.synth.record(item.segment, result)
                if job.streaming and self._publish_segment is not None:
                    # In order: a segment goes out once every one before it has.
                    start, flight.emitted = flight.emitted, job.finished_from(flight.emitted)
                    for index in range(start, flight.emitted):
                        await self._publish_segment(job.segment_record(index))
                if job.done:
                    flight.finished = True
                    flight.engine_ms = int(now_ms() - flight.started_ms) if flight.started_ms else 0
                    finished.append(flight)
            if self._busy_since is not None:  # counted as it goes: under load the engine never empties
                self.metrics.busy(now - self._busy_since)
                self._busy_since = now if self._in_flight else None
                if not self._in_flight:
                    self._idle_since = now
            if any(flight.job.error is not None for flight in finished):
                # a failed job's other segments need no engine time
                self._batcher.remove(lambda item: not item.flight.finished)
            self._slots_changed.set()
            self._batcher.wake()
            if finished:
                await self._spawn_finish(finished)

    async def _drop_expired(self, items: list[_Item[H]]) -> list[_Item[H]]:
        now = now_ms()
        expired = {id(i.flight): i.flight for i in items if i.flight.job.past_deadline(now) and not i.flight.finished}
        if not expired:
            return items
        for flight in expired.values():
            flight.finished = True
        self._batcher.remove(lambda i: id(i.flight) not in expired)
        await self._spawn_publish([(flight.handle, self.synth.deadline_result(flight.job.request))
                                   for flight in expired.values()])
        return [i for i in items if id(i.flight) not in expired]

    async def _spawn_finish(self, flights: list[_Flight[H]]) -> None:
        async def finish_and_publish() -> None:
            records = [await self.synth.finish(flight.job, flight.timing()) for flight in flights]
            await self._publish_acked([(flight.handle, record) for flight, record in zip(flights, records, strict=True)])

        await self._spawn(finish_and_publish)

    async def _spawn_publish(self, items: list[tuple[H, SynthesisResultEvent]]) -> None:
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

    async def _publish_acked(self, items: list[tuple[H, SynthesisResultEvent]]) -> None:
        await self._publish([record for _, record in items])
        await self.synth.mark_synthesized([record.job_id for _, record in items])
        for handle, record in items:
            await self._ack(handle)
            self.metrics.results.labels(record.status).inc()
