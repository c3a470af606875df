"""Streaming speech, the answer: publish a streaming job, wait for its first segment, then send its audio as it comes.

The segments reach this process through ``producer_api.streaming.SegmentRouter``; each is encoded as it arrives
(``voicenote.audio_stream``) and sent raw (OpenAI's default ``stream_format: "audio"``) or framed as server-sent
events (``producer_api.sse``). The job's end is watched as ``SyncSpeech`` watches it (``SyncSpeech.wait_for_end``),
and a job that fails before any audio gets the same answer as a whole-file request (``raise_for_outcome``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from fastapi.responses import Response, StreamingResponse

from producer_api.auth import Caller
from producer_api.errors import ApiError
from producer_api.models import SpeechRequest
from producer_api.services.common import audio_headers, ignored_header
from producer_api.services.sync import NO_RESUBMIT, SyncSpeech, answering_accepted, raise_for_outcome
from producer_api.sse import sse_delta, sse_done, sse_event
from producer_api.streaming import SegmentRouter, router_reading
from schemas.events import SpeechSegment
from schemas.status import JobStatus
from voicenote.audio import CONTENT_TYPES, EncodeFailed
from voicenote.audio_stream import StreamEncoder, stream_encoder
from voicenote.client import new_job_id
from voicenote.errors import AudioNotFound, DependencyUnavailable, VoicenoteError

log = logging.getLogger(__name__)


async def encoded(segments: AsyncIterator[SpeechSegment], encoder: StreamEncoder) -> AsyncIterator[bytes]:
    """Each segment's encoded bytes (skipping empty ones), then the encoder's tail. Encoding runs on a thread:
    a compressed segment takes tens of milliseconds, which the event loop owes to other requests."""
    async for segment in segments:
        data = await asyncio.to_thread(encoder.feed, segment.pcm, segment.sample_rate)
        if data:
            yield data
    tail = await asyncio.to_thread(encoder.finish)
    if tail:
        yield tail


# -- a streaming job, from publish to the last byte -----------------------------------------------


class StreamBroken(VoicenoteError):
    """The stream cannot go on after bytes were sent (a segment missing, the job failed mid-way)."""


# How long a stream whose job is already recorded as finished still waits for its next segment: the
# segments are on the broker before the result, but this process may read them a little behind.
SEGMENT_GRACE_SECONDS = 10.0


class JobSegments:
    """The segments of one job in order, until its last; ``None`` when it ended otherwise (``record``)."""

    def __init__(self, sync: SyncSpeech, job_id: str, queue: asyncio.Queue[SpeechSegment], timeout: float) -> None:
        self._sync = sync
        self.job_id = job_id
        self._queue = queue
        self._timeout = timeout
        self._deadline = asyncio.get_running_loop().time() + timeout
        self.expected = 0
        self.count: int | None = None
        self.record: dict[str, str] | None = None  # the job's terminal record, once seen
        self.sample_rate = 0
        self._taken: list[SpeechSegment] = []  # taken off the queue while waiting: they come before what it holds

    def _pop(self) -> SpeechSegment | None:
        if self._taken:
            return self._taken.pop(0)
        return None if self._queue.empty() else self._queue.get_nowait()

    def _ready(self) -> bool:
        return bool(self._taken) or not self._queue.empty()

    async def next(self) -> SpeechSegment | None:
        loop = asyncio.get_running_loop()
        grace_until: float | None = None
        while self.count is None or self.expected < self.count:
            while (segment := self._pop()) is not None:
                if segment.index < self.expected:
                    continue  # a redelivered job's segments again
                if segment.index > self.expected:
                    raise StreamBroken(f"job {self.job_id}: segment {self.expected} is missing (got {segment.index})")
                self.expected += 1
                self.count = segment.count
                self.sample_rate = segment.sample_rate
                # The timeout bounds the wait for each segment, not the whole stream: a long note keeps going.
                self._deadline = loop.time() + self._timeout
                return segment
            if self.record is not None:
                if self.record["status"] != JobStatus.succeeded.value or (self.expected == 0 and not self._ready()):
                    return None
                grace_until = grace_until or loop.time() + SEGMENT_GRACE_SECONDS
            if self._ready():
                continue
            until = min(self._deadline, grace_until or self._deadline)
            if until - loop.time() <= 0:
                if grace_until is not None:
                    raise StreamBroken(f"job {self.job_id} finished but segment {self.expected} never arrived")
                raise TimeoutError
            # The next segment or the job's end, whichever comes first (the record is read once, until terminal).
            getter = asyncio.ensure_future(self._queue.get())
            try:
                record = await self._sync.wait_for_end(self.job_id, until, also=getter, read=self.record is None)
            except TimeoutError:
                record = None  # ``until`` passed while reading: the next round says what that means
            finally:
                if getter.done() and not getter.cancelled():
                    self._taken.append(getter.result())
                else:
                    getter.cancel()
            if record is not None:
                self.record = record
        return None


async def open_stream(sync: SyncSpeech, router: SegmentRouter, caller: Caller, req: SpeechRequest,
                      idempotency_key: str | None) -> Response:
    """Publish ``req`` as a streaming job and answer with its audio as it is synthesized.

    Waits for the first segment before answering, so a job that fails before any audio gets the same
    status code and error body as a non-streaming request; after that, a failure ends the stream (SSE:
    an ``error`` event; audio: the connection closes before the final chunk, which clients report).
    """
    routed = sync.route(req)  # raises when not subscribed to completions (it could not see the job end)
    # Just after start-up the router may still be looking up the partitions' ends: a moment's wait, not a 503.
    if not await router_reading(router):
        raise DependencyUnavailable("kafka", "not reading the segments topic, cannot stream")
    fmt: str = req.response_format
    sse = req.stream_format == "sse"
    encoder = stream_encoder(fmt)
    job_id = new_job_id()
    timeout = sync.timeout
    headers = {"X-Job-Id": job_id, **ignored_header(routed.ignored)}
    # Registered before publishing, released when the body ends: no segment of this job is missed.
    watch = router.watch(job_id)
    queue = watch.__enter__()
    try:
        if not await sync.publish_once(caller, req, idempotency_key, routed, job_id, stream=True):
            # A replay of an earlier request: its segments are gone, its stored audio is whole.
            watch.__exit__(None, None, None)
            audio = await sync.speak(caller, req, idempotency_key)
            return Response(content=audio.data, media_type=audio.content_type, headers=audio.headers)
        segments = JobSegments(sync, job_id, queue, timeout)
        # Accepted from here on (the request is on the topic): a failure before the answer starts names the job.
        with answering_accepted(job_id, sync.links, ignored_header(routed.ignored)):
            try:
                first = await segments.next()
            except TimeoutError:
                raise ApiError(504, f"job {job_id} sent no audio within {timeout:g}s; poll {sync.links.job(job_id)}",
                               type_="server_error", code="timeout", param=None, job_id=job_id,
                               headers={**headers, "Location": sync.links.job(job_id), **NO_RESUBMIT}) from None
            except StreamBroken as exc:
                raise ApiError(502, str(exc), type_="server_error", code="stream_broken", headers=headers) from None
            if first is None:
                record = segments.record or {}
                if record.get("status") != "succeeded":
                    raise_for_outcome(job_id, record, headers)
                # Answered without the engine (a cache hit), or no segment reached this process: the stored file.
                try:
                    data = await sync.stored_audio(record["audio_key"])
                except AudioNotFound:
                    raise ApiError(410, f"the audio of job {job_id!r} has expired", code="audio_expired") from None
                headers["X-Voicenote-Streamed"] = "false"
                if sse:
                    return StreamingResponse(iter([sse_delta(data), sse_done({"input_characters": len(req.input)})]),
                                             media_type="text/event-stream", headers=headers)
                headers.update(audio_headers(job_id, fmt, record, routed.model.sample_rate))
                return Response(content=data, media_type=record.get("content_type") or CONTENT_TYPES[fmt], headers=headers)
    except BaseException:
        watch.__exit__(None, None, None)
        raise

    async def rest() -> AsyncIterator[SpeechSegment]:
        segment: SpeechSegment | None = first
        while segment is not None:
            yield segment
            segment = await segments.next()
        if segments.record is not None and segments.record.get("status") != "succeeded":
            raise StreamBroken(f"job {job_id} ended {segments.record.get('status')}: {segments.record.get('error_message')}")

    async def audio_body() -> AsyncIterator[bytes]:
        try:
            async for data in encoded(rest(), encoder):
                yield data
        except (StreamBroken, TimeoutError, EncodeFailed) as exc:
            log.warning("stream of job %s cut short: %s", job_id, exc)
            raise  # the connection closes without the last chunk: the client sees a truncated body
        finally:
            watch.__exit__(None, None, None)

    async def sse_body() -> AsyncIterator[bytes]:
        seconds = 0.0
        try:
            async for segment in rest():
                seconds += len(segment.pcm) / 2 / segment.sample_rate
                if segment.word_timestamps is not None:  # asked for (timestamps: "word"): the words of this audio first
                    yield sse_event({"type": "speech.timestamps", "words": json.loads(segment.word_timestamps)})
                data = await asyncio.to_thread(encoder.feed, segment.pcm, segment.sample_rate)
                if data:
                    yield sse_delta(data)
            tail = await asyncio.to_thread(encoder.finish)
            if tail:
                yield sse_delta(tail)
            yield sse_done({"input_characters": len(req.input), "output_audio_ms": int(seconds * 1000)})
        except (StreamBroken, TimeoutError, EncodeFailed) as exc:
            log.warning("stream of job %s cut short: %s", job_id, exc)
            yield sse_event({"type": "error", "error": {"message": str(exc) or "timed out", "code": "stream_broken"}})
        finally:
            watch.__exit__(None, None, None)

    headers["X-Voicenote-Streamed"] = "true"
    if sse:
        return StreamingResponse(sse_body(), media_type="text/event-stream", headers=headers)
    if fmt == "pcm":
        headers.update({"X-Sample-Rate": str(first.sample_rate), "X-Channels": "1", "X-Sample-Format": "s16le"})
    return StreamingResponse(audio_body(), media_type=CONTENT_TYPES[fmt], headers=headers)
