"""Streaming speech: segments from the synthesis workers, routed to the waiting HTTP response, encoded as they come.

A streaming request is published with the ``stream`` attribute; the synthesis worker then puts each
finished segment of it on ``voicenote.segments.v1`` (a SpeechSegment event, keyed by job_id, in order).
Every API process reads all partitions of that topic from its end (:class:`SegmentRouter`, a consumer
without a group: each process needs every segment, not a share) and hands each segment to the response
that registered for its job id before publishing, so none is missed. The response encodes each
segment as it arrives (:func:`stream_encoder`) and ends after the segment whose index is ``count - 1``.

The job's end still comes the usual way (completion -> Redis): a job that fails or is cancelled ends
the stream with an error, and a job answered without the engine (a cache hit, so no segments) is sent
as its stored file in one piece.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from schemas.codec import Codecs
from schemas.errors import DecodeError, VoicenoteError
from schemas.events import SpeechSegment
from schemas.topics import TopicSpec
from voicenote.audio import _CODECS, CONTENT_TYPES, EncodeFailed
from voicenote.kafka import OFFSET_END, Consumer, KafkaException, TopicPartition
from voicenote.kafka import consumer as new_consumer
from voicenote.settings import KafkaSettings

if TYPE_CHECKING:
    from producer_api.services.sync import SyncSpeech

log = logging.getLogger(__name__)

StreamFormat = Literal["audio", "sse", "none"]  # unset is "audio", OpenAI's default


# -- routing segments to responses ----------------------------------------------------------------


class SegmentRouter:
    """Reads the segments topic on a thread and puts each segment on the queue of the response waiting
    for its job; segments of jobs nobody here waits for are dropped (another process is serving them)."""

    POLL_SECONDS = 0.2

    def __init__(self, settings: KafkaSettings, topic: TopicSpec, codecs: Codecs) -> None:
        self._settings = settings
        # Never committed: a group id only because the client requires one for fetching.
        self._group = f"voicenote-api-segments-{uuid.uuid4().hex}"
        self._conf = {
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            # A segment should not sit in the broker waiting for a fuller fetch; 50 ms keeps an idle API's
            # fetches at 20/s.
            "fetch.wait.max.ms": 50,
            "allow.auto.create.topics": False,
        }
        self._topic = topic
        self._codecs = codecs
        self._waiting: dict[str, asyncio.Queue[SpeechSegment]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()  # assigned at the end of every partition: later segments are seen
        self.decode_failures = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="segment-router", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Queue[SpeechSegment]]:
        """The queue of ``job_id``'s segments; register before publishing the request."""
        queue: asyncio.Queue[SpeechSegment] = asyncio.Queue()
        self._waiting[job_id] = queue
        try:
            yield queue
        finally:
            if self._waiting.get(job_id) is queue:
                del self._waiting[job_id]

    def _run(self) -> None:
        while not self._stop.is_set():
            consumer: Consumer | None = None
            try:
                consumer = new_consumer(self._settings, self._group, self._conf)
                # The end offset of each partition, explicitly: a logical "end" resolves only on the first
                # fetch, and a segment published before that would be skipped.
                parts = []
                for p in range(self._topic.partitions):
                    _, high = consumer.get_watermark_offsets(TopicPartition(self._topic.name, p), timeout=10)
                    parts.append(TopicPartition(self._topic.name, p, high if high >= 0 else OFFSET_END))
                consumer.assign(parts)
                self.ready.set()
                while not self._stop.is_set():
                    msg = consumer.poll(self.POLL_SECONDS)
                    if msg is None:
                        continue
                    if msg.error():
                        log.warning("segments topic: %s", msg.error())
                        continue
                    self._route(msg.value())
            except KafkaException as exc:
                log.warning("segment router lost the broker (%s); streams wait on their jobs' completions", exc)
                self.ready.clear()
                self._stop.wait(1.0)
            finally:
                if consumer is not None:
                    consumer.close()

    def _route(self, value: bytes | None) -> None:
        try:
            segment = self._codecs.segment.decode_event(value)
        except DecodeError as exc:
            # Nothing to dead-letter: the job's audio is on the audio topic; this stream ends in an error.
            self.decode_failures += 1
            log.error("undecodable segment event dropped: %s", exc)
            return
        queue = self._waiting.get(segment.job_id)
        if queue is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(queue.put_nowait, segment)


# -- incremental encoders -------------------------------------------------------------------------


class StreamEncoder:
    """Turns 16-bit mono PCM chunks into the bytes of one format, as they come."""

    def feed(self, pcm: bytes, sample_rate: int) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""


class PcmEncoder(StreamEncoder):
    def feed(self, pcm: bytes, sample_rate: int) -> bytes:
        return pcm


# A RIFF/data size of 0xFFFFFFFF: "unknown length, read to the end", as OpenAI's and Kokoro's streams send.
UNKNOWN_SIZE = 0xFFFFFFFF


def streaming_wav_header(sample_rate: int) -> bytes:
    """A 44-byte header for 16-bit mono PCM of unknown length."""
    return (b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", UNKNOWN_SIZE))


class WavEncoder(StreamEncoder):
    def __init__(self) -> None:
        self._started = False

    def feed(self, pcm: bytes, sample_rate: int) -> bytes:
        if self._started:
            return pcm
        self._started = True
        return streaming_wav_header(sample_rate) + pcm


class _Sink:
    """A write-only, non-seekable file for PyAV: the muxer cannot go back to patch a header we already sent."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


class CompressedEncoder(StreamEncoder):
    """mp3, opus (Ogg), aac (ADTS) or flac through one PyAV encoder kept open for the whole stream (same
    codecs and bit rates as :func:`voicenote.audio.encode`). Opus output comes a page at a time."""

    def __init__(self, fmt: str) -> None:
        self._fmt = fmt
        self._sink = _Sink()
        self._container: Any = None
        self._stream: Any = None
        self._resampler: Any = None
        self._rate = 0

    def _open(self, sample_rate: int) -> None:
        import av  # imported here: the import costs ~100 ms and only streaming needs it in the API

        container_name, codec, sample_fmt, forced_rate, bit_rate = _CODECS[self._fmt]
        out_rate = forced_rate or sample_rate
        self._container = av.open(self._sink, mode="w", format=container_name)
        self._stream = self._container.add_stream(codec, rate=out_rate)
        self._stream.layout = "mono"
        if bit_rate:
            self._stream.bit_rate = bit_rate
        self._resampler = av.AudioResampler(format=sample_fmt, layout="mono", rate=out_rate)
        self._rate = sample_rate

    def _encode(self, frame: Any) -> None:
        for chunk in self._resampler.resample(frame):
            chunk.pts = None
            for packet in self._stream.encode(chunk):
                self._container.mux(packet)

    def feed(self, pcm: bytes, sample_rate: int) -> bytes:
        import av

        try:
            if self._container is None:
                self._open(sample_rate)
            elif sample_rate != self._rate:
                raise EncodeFailed(f"sample rate changed mid-stream ({self._rate} -> {sample_rate})")
            samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16).reshape(1, -1)
            if samples.size:
                frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = None
                self._encode(frame)
        except av.FFmpegError as exc:
            raise EncodeFailed(f"{self._fmt} encoding failed: {exc}") from exc
        return self._sink.take()

    def finish(self) -> bytes:
        import av

        if self._container is None:
            return b""
        try:
            self._encode(None)
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        except av.FFmpegError as exc:
            raise EncodeFailed(f"{self._fmt} encoding failed: {exc}") from exc
        return self._sink.take()


def stream_encoder(fmt: str) -> StreamEncoder:
    if fmt == "pcm":
        return PcmEncoder()
    if fmt == "wav":
        return WavEncoder()
    if fmt in _CODECS:
        return CompressedEncoder(fmt)
    raise EncodeFailed(f"format {fmt!r} is not one of {', '.join(CONTENT_TYPES)}")


# -- the response body ----------------------------------------------------------------------------


def sse_event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def sse_delta(audio: bytes) -> bytes:
    """OpenAI's ``speech.audio.delta``: a piece of the audio, base64."""
    return sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode()})


def sse_done(usage: dict[str, int]) -> bytes:
    return sse_event({"type": "speech.audio.done", "usage": usage})


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
ROUTER_READY_WAIT_SECONDS = 10.0


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
        from producer_api.services.sync import _RECHECK_SECONDS
        from schemas.status import JobStatus

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
            with self._sync.watch(self.job_id) as done:
                if self.record is None:
                    record = await self._sync.record(self.job_id)
                    if record is not None and JobStatus(record["status"]).terminal:
                        self.record = record
                if self.record is not None:
                    if self.record["status"] != JobStatus.succeeded.value or (self.expected == 0 and not self._ready()):
                        return None
                    grace_until = grace_until or loop.time() + SEGMENT_GRACE_SECONDS
                if self._ready():
                    continue
                until = min(self._deadline, grace_until or self._deadline)
                remaining = until - loop.time()
                if remaining <= 0:
                    if grace_until is not None:
                        raise StreamBroken(f"job {self.job_id} finished but segment {self.expected} never arrived")
                    raise TimeoutError
                getter = asyncio.ensure_future(self._queue.get())
                try:
                    await asyncio.wait({getter, done}, timeout=min(remaining, _RECHECK_SECONDS),
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if getter.done() and not getter.cancelled():
                        self._taken.append(getter.result())
                    else:
                        getter.cancel()
        return None


async def router_reading(router: SegmentRouter, seconds: float = ROUTER_READY_WAIT_SECONDS) -> bool:
    """Whether ``router`` reads the segments topic, waiting up to ``seconds`` (just after start-up it may still be
    looking up the partitions' ends: a moment's wait, not a refusal)."""
    return router.ready.is_set() or await asyncio.to_thread(router.ready.wait, seconds)


def _raise_for(job_id: str, record: dict[str, str], headers: dict[str, str]) -> None:
    """The error a non-streaming request gets for a job that did not succeed (SyncSpeech.speak's mapping)."""
    from producer_api.errors import ApiError

    if record.get("status") == "cancelled":
        raise ApiError(409, f"job {job_id} was cancelled", code="job_cancelled", headers=headers)
    code, message = record.get("error_code", "unknown"), record.get("error_message", "synthesis failed")
    if code == "invalid_request":
        raise ApiError(400, f"job {job_id}: {message}", code=code, headers=headers)
    raise ApiError(500, f"job {job_id} failed: {message}", type_="server_error", code=code, headers=headers)


async def open_stream(sync: SyncSpeech, router: SegmentRouter, caller: Any, req: Any, idempotency_key: str | None) -> Any:
    """Publish ``req`` as a streaming job and answer with its audio as it is synthesized.

    Waits for the first segment before answering, so a job that fails before any audio gets the same
    status code and error body as a non-streaming request; after that, a failure ends the stream (SSE:
    an ``error`` event; audio: the connection closes before the final chunk, which clients report).
    """
    from fastapi.responses import Response, StreamingResponse

    from producer_api.errors import ApiError
    from producer_api.services.common import audio_headers, ignored_header
    from producer_api.services.sync import NO_RESUBMIT, answering_accepted
    from voicenote.client import new_job_id
    from voicenote.errors import AudioNotFound, DependencyUnavailable

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
                    _raise_for(job_id, record, headers)
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
