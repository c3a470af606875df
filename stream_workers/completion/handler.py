"""The completion role's two consumers as plain handlers: what a fetch brought in, the job records out.

The Faust agents in stream_workers/app.py only hand each group of events to these; a test calls them
directly. ``storage``: results of the audio topic become stored audio, one completion event per job and
its projection. ``status``: the requests of every request topic become ``queued`` job records.

A group is handled as a whole: one storage call, the group's sends in flight together, one Redis round
trip. It is acknowledged (by the agent, once this returns) only when every output is on the broker
(at-least-once; the work is idempotent per job).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from schemas.codec import AvroCodec, Codecs
from schemas.errors import DecodeError
from schemas.events import JobCompletion, SynthesisRequest, SynthesisResult
from stream_workers.completion.status import StatusProjector, fresh_results
from stream_workers.completion.storage import Storer
from stream_workers.runtime.metrics import CompletionMetrics
from voicenote.tracing import record_span

log = logging.getLogger(__name__)

# Queues one completion event with the producer; awaiting what it returns waits for the broker's acknowledgement.
SendCompletion = Callable[[JobCompletion], Awaitable[Awaitable[Any]]]
# Queues the dead letter of an event that does not decode (the event, the consumer's name, why); the same two steps.
SendDeadLetter = Callable[[Any, str, DecodeError], Awaitable[Awaitable[Any]]]


class CompletionHandler:
    """The storage and status consumers of the completion role. An event is anything with the record's
    ``value`` (a Faust event in the worker); only a dead letter reads more of it."""

    def __init__(self, codecs: Codecs, storer: Storer, projector: StatusProjector, send_completion: SendCompletion,
                 send_dead_letter: SendDeadLetter, metrics: CompletionMetrics | None = None) -> None:
        self._codecs = codecs
        self.storer = storer
        self.projector = projector
        self._send_completion = send_completion
        self._send_dead_letter = send_dead_letter
        self.metrics = metrics or CompletionMetrics()

    async def storage(self, events: Sequence[Any]) -> list[JobCompletion]:
        """One group of the audio topic: the completions emitted and projected (none for a job already completed)."""
        results, sent = await self._decode(events, self._codecs.result, "storage")
        fresh = fresh_results(results, await self.projector.already_completed([r.job_id for r in results]))
        if len(fresh) < len(results):
            log.info("dropping %d results of jobs already completed (redelivered requests)", len(results) - len(fresh))
        done = [dataclasses.replace(c, trace_parent=record_span(
                    "voicenote.completion", c.trace_parent, seconds=(c.upload_ms or 0) / 1000,
                    attributes={"voicenote.job_id": c.job_id, "voicenote.status": c.status}))
                for c in await self.storer.complete_many(fresh)]
        sent += [await self._send_completion(c) for c in done]
        await asyncio.gather(*sent)
        # Projected here, once the events are on the broker (so a job never reads as finished before its
        # completion event exists), rather than by consuming our own output again: that cost a third of this
        # role's CPU, a fetch stream and a broker hop of latency. `voicenote projection rebuild` still
        # rebuilds from the completion topic.
        await self.projector.on_completions(done)
        self.metrics.completed(done)
        return done

    async def status(self, events: Sequence[Any]) -> list[SynthesisRequest]:
        """One group of the request topics: the requests projected as queued (or found already further on)."""
        # The synthesis group owns dead-lettering of request records; one copy is enough.
        requests, _ = await self._decode(events, self._codecs.request, None)
        await self.projector.on_requests(requests)
        return requests

    async def reapply(self, results: Sequence[SynthesisResult]) -> None:
        """Completes jobs from their results exactly as :meth:`storage` does (the early check's path), without
        the dedup: the caller decided these are due."""
        done = await self.storer.complete_many(results)
        await self.emit(done)
        await self.projector.on_completions(done)
        self.metrics.completed(done)

    async def emit(self, completions: Sequence[JobCompletion]) -> None:
        """Publishes completion events made elsewhere (watchdog, lost requests, early check); returns once acknowledged."""
        await asyncio.gather(*[await self._send_completion(c) for c in completions])

    async def _decode(self, events: Sequence[Any], codec: AvroCodec[Any],
                      consumer: str | None) -> tuple[list[Any], list[Awaitable[Any]]]:
        """The decoded records, and the pending dead-letter sends of the rest (consumer None: leave them to another)."""
        records: list[Any] = []
        dead: list[Awaitable[Any]] = []
        for event in events:
            try:
                records.append(codec.decode_event(event.value))
            except DecodeError as exc:
                if consumer is not None:
                    self.metrics.dead_letters.inc()
                    dead.append(await self._send_dead_letter(event, consumer, exc))
        return records, dead
