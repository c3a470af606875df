"""The synthesis role assembled from a worker's context and its engine: the consumer of the request topic
(a :class:`SynthesisLoop` per assignment), what it publishes, its drain and its advert.

The Faust agent in stream_workers/app.py hands :meth:`SynthesisRole.consume` the manually acknowledged
events of its stream; a test can hand it any async iterator of events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

from schemas.errors import DecodeError
from schemas.events import SpeechSegment
from schemas.events import SynthesisResult as SynthesisResultEvent
from stream_workers.engine.base import SpeechEngine
from stream_workers.engine.slots import continuous
from stream_workers.runtime.acks import InOrderAcks
from stream_workers.runtime.context import WorkerContext
from stream_workers.runtime.metrics import SynthesisMetrics
from stream_workers.synthesis.batching import BatchPolicy
from stream_workers.synthesis.loop import SynthesisLoop
from stream_workers.synthesis.synthesizer import Refused, Synthesizer
from voicenote.adverts import ADVERT_INTERVAL_SECONDS, publish_advert
from voicenote.errors import JobStoreError
from voicenote.jobstore import redis_client
from voicenote.models import family_of
from voicenote.tracing import record_span

log = logging.getLogger(__name__)

# Queues one record (key, value) with the producer; awaiting what it returns waits for the broker's acknowledgement.
Send = Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]
# Queues the dead letter of an event (the event, the consumer's name, why); the same two steps.
SendDeadLetter = Callable[[Any, str, DecodeError], Awaitable[Awaitable[Any]]]


class SynthesisRole:
    def __init__(self, ctx: WorkerContext, engine: SpeechEngine, send_audio: Send, send_dead_letter: SendDeadLetter,
                 send_segment: Send | None = None) -> None:
        s = ctx.settings
        self._ctx = ctx
        self.engine = engine
        self._send_audio = send_audio
        self._send_segment = send_segment
        self._send_dead_letter = send_dead_letter
        self.synthesizer = Synthesizer(engine, ctx.codecs, ctx.store, s.storage, s.synthesis, ctx.jobs, cache=ctx.cache)
        self.metrics = SynthesisMetrics()
        self.policy = BatchPolicy(s.worker.max_batch, s.worker.window_seconds, max(s.worker.batch_lookahead, s.worker.max_batch),
                                  bulk_delay=s.worker.bulk_delay_seconds)
        # A batch engine gets one batch of max_batch rows running and one forming; a native one keeps its own slots.
        self.slots = continuous(engine, s.worker.max_batch)
        self._running: list[SynthesisLoop[Any]] = []
        self._finished = asyncio.Event()

    async def consume(self, events: AsyncIterator[Any], ack: Callable[[Any], Awaitable[Any]],
                      partition_of: Callable[[Any], Hashable]) -> None:
        """Runs a :class:`SynthesisLoop` over ``events`` (each with the record's ``value``) until drained. An event
        is acknowledged through ``ack`` once it and every earlier one of its partition (``partition_of``) are done."""
        in_order: InOrderAcks[Any] = InOrderAcks(partition_of)

        async def ack_in_order(event: Any) -> None:
            for released in in_order.done(event):
                await ack(released)

        async def source() -> AsyncIterator[tuple[Any, bytes | None]]:
            async for event in events:
                in_order.register(event)
                yield event, event.value

        loop: SynthesisLoop[Any] = SynthesisLoop(
            self.synthesizer, self.policy, engine=self.slots, publish=self.publish, dead_letter=self.dead_letter,
            ack=ack_in_order, metrics=self.metrics, intake_size=self._ctx.settings.synthesis.intake_size,
            publish_segment=self.publish_segment if self._send_segment is not None else None)
        self._running.append(loop)
        try:
            await loop.run(source())
        finally:
            self._finished.set()

    async def publish(self, results: list[SynthesisResultEvent]) -> None:
        traced = [dataclasses.replace(r, trace_parent=record_span(
                      "voicenote.synthesis", r.trace_parent, seconds=(r.batch_wait_ms + r.engine_ms) / 1000,
                      attributes={"voicenote.job_id": r.job_id, "voicenote.status": r.status,
                                  "voicenote.batch_size": r.batch_size}))
                  for r in results]
        # Queue every record with the producer first, then wait for the broker's acknowledgements together.
        sent = [await self._send_audio(r.job_id.encode(), self._ctx.codecs.result.encode_event(r)) for r in traced]
        await asyncio.gather(*sent)

    async def publish_segment(self, segment: SpeechSegment) -> None:
        # Queued in order on one partition (keyed by job_id), not awaited to the broker: the result that follows is
        # what the job's at-least-once rests on; a segment lost in delivery ends that one stream (the API sees the
        # gap), never the job.
        assert self._send_segment is not None
        await self._send_segment(segment.job_id.encode(), self._ctx.codecs.segment.encode_event(segment))

    async def dead_letter(self, event: Any, refused: Refused) -> None:
        await (await self._send_dead_letter(event, "synthesis", DecodeError(refused.reason, refused.message)))

    async def drain(self) -> None:
        """Let the engine finish what it holds and publish it; the caller commits what is acknowledged."""
        for loop in self._running:
            await loop.drain()
        if self._running:
            await self._finished.wait()
        await asyncio.to_thread(self.slots.close)  # idle by now: the loop waited for every row it submitted

    async def advertise(self) -> None:
        """Keeps this engine's advert in Redis for GET /v1/audio/voices; runs until cancelled. A missed advert only
        leaves the engine out of that list for a while."""
        s = self._ctx.settings
        client = redis_client(s.redis, socket_connect_timeout=2, socket_timeout=5)
        family = family_of(s.engine.kind)
        engine = self.engine
        try:
            while True:
                try:
                    await publish_advert(client, s.redis.key_prefix, family, engine=engine.name,
                                         model_version=engine.model_version, sample_rate=engine.sample_rate,
                                         voices=engine.voices())
                except JobStoreError as exc:
                    log.warning("%s; retrying in %.0fs", exc, ADVERT_INTERVAL_SECONDS)
                await asyncio.sleep(ADVERT_INTERVAL_SECONDS)
        finally:
            await client.aclose()
