"""Streaming speech, the routing half: segments from the synthesis workers, routed to the waiting HTTP response.

A streaming request is published with the ``stream`` attribute; the synthesis worker then puts each
finished segment of it on ``voicenote.segments.v1`` (a SpeechSegment event, keyed by job_id, in order).
Every API process reads all partitions of that topic from its end (:class:`SegmentRouter`, a consumer
without a group: each process needs every segment, not a share) and hands each segment to the response
that registered for its job id before publishing, so none is missed.

The other halves: the response (``producer_api/services/streaming.py``) encodes each segment as it arrives
(``voicenote.audio_stream``) and frames it (raw, or server-sent events: ``producer_api/sse.py``), and ends after
the segment whose index is ``count - 1``. The job's end still comes the usual way (completion -> Redis): a job
that fails or is cancelled ends the stream with an error, and a job answered without the engine (a cache hit,
so no segments) is sent as its stored file in one piece.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from schemas.codec import Codecs
from schemas.errors import DecodeError
from schemas.events import SpeechSegment
from schemas.topics import TopicSpec
from voicenote.kafka import OFFSET_END, Consumer, KafkaException, TopicPartition
from voicenote.kafka import consumer as new_consumer
from voicenote.settings import KafkaSettings

log = logging.getLogger(__name__)

ROUTER_READY_WAIT_SECONDS = 10.0


# -- routing segments to responses ----------------------------------------------------------------


class SegmentRouter:
    """Reads the segments topic on a thread and puts each segment on the queue of the response waiting
    for its job; segments of jobs nobody here waits for are dropped (another process is serving them)."""

    POLL_SECONDS = 0.2
    # Paused (no stream waits), the loop only serves the client's callbacks: watch() and stop() wake it at once.
    PAUSED_WAKE_SECONDS = 2.0

    def __init__(self, settings: KafkaSettings, topic: TopicSpec, codecs: Codecs) -> None:
        self._settings = settings
        # Never committed: a group id only because the client requires one for fetching.
        self._group = f"voicenote-api-segments-{uuid.uuid4().hex}"
        self._conf = {
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            # A segment should not sit in the broker waiting for a fuller fetch; while no stream waits, the
            # partitions are paused and nothing is fetched (_run).
            "fetch.wait.max.ms": 50,
            "allow.auto.create.topics": False,
        }
        self._topic = topic
        self._codecs = codecs
        self._waiting: dict[str, asyncio.Queue[SpeechSegment]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by watch(): a stream now waits, so the paused reading resumes
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()  # assigned at the end of every partition: later segments are seen
        self.decode_failures = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="segment-router", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Queue[SpeechSegment]]:
        """The queue of ``job_id``'s segments; register before publishing the request."""
        queue: asyncio.Queue[SpeechSegment] = asyncio.Queue()
        self._waiting[job_id] = queue
        self._wake.set()
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
                paused = False
                while not self._stop.is_set():
                    # No stream waiting: no fetching either (an idle API's fetches kept Tansu reading the topic's
                    # partitions 20 times a second, issue 24). Paused partitions keep their position, so a resume
                    # reads on from where it stopped and misses nothing; watch() wakes this loop at once.
                    if not self._waiting:
                        if not paused:
                            consumer.pause(consumer.assignment())
                            paused = True
                        consumer.poll(0)  # serves the client's callbacks while paused
                        self._wake.wait(self.PAUSED_WAKE_SECONDS)
                        self._wake.clear()
                        continue
                    if paused:
                        consumer.resume(consumer.assignment())
                        paused = False
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


async def router_reading(router: SegmentRouter, seconds: float = ROUTER_READY_WAIT_SECONDS) -> bool:
    """Whether ``router`` reads the segments topic, waiting up to ``seconds`` (just after start-up it may still be
    looking up the partitions' ends: a moment's wait, not a refusal)."""
    return router.ready.is_set() or await asyncio.to_thread(router.ready.wait, seconds)
