"""The webhook dispatcher: completions (and due retries) in, signed deliveries out.

A failed attempt is not waited for here: the completion goes to the retry topic of its retry number
with a ``webhook-due-at`` header. Records of one retry topic wait nearly equally long, so a partition's
head is always the next due; the dispatcher pauses that partition until then (seeking back to the head)
and keeps serving every other partition. After the last attempt, or at once when the policy refuses the
URL, the completion goes to the webhook dead-letter topic with every attempt listed.

Every attempt's outcome (delivered, retrying, failed, refused) is published on the deliveries topic, keyed by
job_id, before the job record shows it: Redis holds the job's webhook state, the topic the record of it that
outlives Redis (``voicenote projection rebuild`` restores the state from it, stream_workers/completion/projection.py).

Each partition has its own worker task, which takes that partition's records one at a time: a slow or
hanging receiver holds up its own partition (up to the attempt timeout), not the others, and offsets
are stored in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from schemas.codec import Codecs
from schemas.errors import DecodeError
from schemas.events import (
    WEBHOOK_DELIVERED,
    WEBHOOK_FAILED,
    WEBHOOK_REFUSED,
    WEBHOOK_RETRYING,
    DeadLetter,
    JobCompletion,
    WebhookDelivery,
)
from schemas.topics import TopicCatalog
from stream_workers.runtime.metrics import WebhookMetrics
from stream_workers.webhooks.delivery import AttemptOutcome, WebhookSender
from stream_workers.webhooks.schedule import retry_tier, scheduled_delay
from voicenote.errors import DependencyUnavailable
from voicenote.jobstore import JobStore
from voicenote.kafka import AsyncProducer, Consumer, KafkaError, KafkaException, Message, TopicPartition
from voicenote.kafka import consumer as new_consumer
from voicenote.settings import Settings, WebhookSettings
from voicenote.tracing import SpanKind, http_outcome, span

log = logging.getLogger(__name__)

H_ATTEMPT = "webhook-attempt"
H_DUE = "webhook-due-at"
H_LOG = "webhook-log"


def webhook_payload(completion: JobCompletion) -> bytes:
    """The JSON body: the completion as ``data``, in the Standard Webhooks ``{type, timestamp, data}`` shape."""
    body = {
        "type": f"voicenote.job.{completion.status}",
        "timestamp": datetime.fromtimestamp(completion.completed_at / 1000, tz=UTC).isoformat(),
        "data": completion.to_record(),
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def webhook_group(settings: Settings) -> str:
    """The dispatcher's consumer group."""
    return f"{settings.worker.group_id}-webhooks"


def webhook_consumer(settings: Settings) -> Consumer:
    """The dispatcher's consumer, from the one client factory (voicenote.kafka); the dispatcher subscribes it."""
    return new_consumer(settings.kafka, webhook_group(settings), {
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,  # an offset is stored only once its record is fully handled
        # A killed dispatcher redelivers what was handled since the last commit: committing every 200 ms
        # instead of librdkafka's 5 s keeps those duplicates to about what was in flight.
        "auto.commit.interval.ms": 200,
        "session.timeout.ms": settings.kafka.session_timeout_ms,
        "heartbeat.interval.ms": settings.kafka.heartbeat_interval_ms,
        # Its own wait: a webhook is not waited on by a request, and on Tansu a shorter wait is more fetches
        # to answer while idle (issue 24).
        "fetch.wait.max.ms": settings.webhooks.fetch_max_wait_ms or settings.kafka.fetch_max_wait_ms,
    })


def message_id(job_id: str) -> str:
    """The ``webhook-id``: the same on every attempt, so receivers can drop duplicates."""
    return f"msg_{job_id}"


class WebhookDispatcher:
    def __init__(self, settings: Settings, catalog: TopicCatalog, codecs: Codecs, jobs: JobStore, sender: WebhookSender,
                 producer: AsyncProducer, *, rng: random.Random | None = None, clock: Callable[[], float] = time.time,
                 max_queued: int = 64, metrics: WebhookMetrics | None = None, consumer: Consumer | None = None) -> None:
        """``consumer``: the one to subscribe (unsubscribed, in :func:`webhook_group`); default :func:`webhook_consumer`."""
        assert catalog.webhook_dead_letter is not None and catalog.webhook_retries and catalog.webhook_deliveries is not None
        self._deliveries = catalog.webhook_deliveries.name
        self._hooks: WebhookSettings = settings.webhooks
        self._catalog = catalog
        self._codecs = codecs
        self._jobs = jobs
        self._sender = sender
        self._producer = producer
        self._rng = rng or random.Random()
        self._clock = clock
        self._last_record_at = time.monotonic()  # the progress reader rests while none comes (seconds_without_records)
        self._metrics = metrics or WebhookMetrics()
        self._retry_topics = [spec.name for spec in catalog.webhook_retries]
        self.group = webhook_group(settings)
        self._consumer = consumer if consumer is not None else webhook_consumer(settings)
        self._paused: dict[tuple[str, int], tuple[int, TopicPartition]] = {}  # (topic, partition) -> (due ms, head)
        # One worker task per partition, each working through its partition's records in order: a slow
        # receiver holds up its own partition only, and offsets are stored in order.
        self._queues: dict[tuple[str, int], deque[Message]] = {}
        self._workers: dict[tuple[str, int], tuple[deque[Message], asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._throttled: set[tuple[str, int]] = set()
        self._revoked: list[tuple[str, int]] = []  # appended by the rebalance callback (poll's thread)
        # Replaced whole by the rebalance callbacks (poll's thread), read by the progress watch (the loop).
        self._assigned: frozenset[tuple[str, int]] = frozenset()
        self._max_queued = max_queued
        # Consumer calls made while poll() runs in its thread block until it returns (librdkafka serialises
        # them), so workers leave theirs here and the loop applies them between polls.
        self._ops: list[Callable[[], None]] = []

    def seconds_without_records(self) -> float:
        """Since the consumer last handed over a record (or an error), or since the dispatcher was made."""
        return time.monotonic() - self._last_record_at

    async def run(self, stop: asyncio.Event) -> None:
        self._consumer.subscribe([self._catalog.completions.name, *self._retry_topics], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke)
        try:
            while not stop.is_set():
                self._check_workers()
                self._forget_revoked()
                self._resume_due()
                self._apply_ops()
                msg = await asyncio.to_thread(self._consumer.poll, self._poll_timeout())
                self._forget_revoked()
                self._apply_ops()
                if msg is None:
                    continue
                self._last_record_at = time.monotonic()
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise DependencyUnavailable("kafka", f"webhook consumer: {error}")
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("webhook consumer: %s", error)
                    continue
                self._enqueue(msg)
            # Finish the attempts in hand (each bounded by the attempt timeout) before leaving the group.
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._apply_ops()
            self._check_workers()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.to_thread(self._consumer.close)

    def _check_workers(self) -> None:
        """Re-raise a worker's failure (Redis or Kafka down): the process stops rather than losing records."""
        for task in [t for t in self._tasks if t.done()]:
            self._tasks.discard(task)
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc

    def _apply_ops(self) -> None:
        ops, self._ops = self._ops, []
        for op in ops:
            op()

    def _enqueue(self, msg: Message) -> None:
        key = (str(msg.topic()), int(msg.partition() or 0))
        if key in self._paused:
            return  # fetched before the hold took effect; it comes again after the head, once due
        queue = self._queues.setdefault(key, deque())
        queue.append(msg)
        worker = self._workers.get(key)
        if worker is None or worker[0] is not queue or worker[1].done():
            task = asyncio.create_task(self._work(key, queue), name=f"webhooks-{key[0]}-{key[1]}")
            self._workers[key] = (queue, task)
            self._tasks.add(task)
        if len(queue) >= self._max_queued and key not in self._throttled:
            self._consumer.pause([TopicPartition(*key)])
            self._throttled.add(key)

    async def _work(self, key: tuple[str, int], queue: deque[Message]) -> None:
        while queue:
            msg = queue[0]
            await self.handle(msg)
            if queue and queue[0] is msg:
                queue.popleft()
            if key in self._throttled and len(queue) < self._max_queued // 2 and key not in self._paused:
                self._throttled.discard(key)
                self._ops.append(partial(self._consumer.resume, [TopicPartition(*key)]))
        if self._queues.get(key) is queue:
            del self._queues[key]

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = self._assigned | {(tp.topic, tp.partition) for tp in partitions}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._revoked.extend((tp.topic, tp.partition) for tp in partitions)
        self._assigned = self._assigned - {(tp.topic, tp.partition) for tp in partitions}

    def watched_partitions(self) -> set[tuple[str, int]] | None:
        """What the progress watch should see move: the assigned partitions less those parked until a retry
        is due (they lag on purpose); None while none is assigned (stream_workers/runtime/progress.py)."""
        assigned = self._assigned
        if not assigned:
            return None
        return set(assigned) - set(self._paused)

    def _forget_revoked(self) -> None:
        # Records queued for a partition we lost are the new owner's now; an attempt in flight finishes,
        # and its offset (no longer ours to store) is redelivered there: at least once, same webhook-id.
        while self._revoked:
            key = self._revoked.pop()
            self._paused.pop(key, None)
            self._throttled.discard(key)
            queue = self._queues.pop(key, None)
            if queue is not None:
                queue.clear()  # its worker stops after the record in hand

    def _poll_timeout(self) -> float:
        if self._tasks:
            return 0.05  # workers are busy: come back soon to apply what they leave in _ops
        if not self._paused:
            return self._hooks.poll_seconds
        soonest = min(due for due, _ in self._paused.values())
        return max(0.01, min(self._hooks.poll_seconds, (soonest - self._now_ms()) / 1000))

    def _resume_due(self) -> None:
        now = self._now_ms()
        due = [key for key, (at, _) in self._paused.items() if at <= now]
        if due:
            self._consumer.resume([self._paused.pop(key)[1] for key in due])

    def _hold(self, msg: Message, due_ms: int) -> None:
        """Park the partition at ``msg`` until it is due: pause, and seek back so it is fetched again then."""
        topic, partition, offset = str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)
        head = TopicPartition(topic, partition, offset)
        def park() -> None:
            self._consumer.pause([head])
            self._consumer.seek(head)

        self._ops.append(park)
        self._paused[(topic, partition)] = (due_ms, head)
        self._throttled.discard((topic, partition))
        queue = self._queues.get((topic, partition))
        if queue is not None:
            queue.clear()  # everything behind the head is fetched again after it

    def _store(self, msg: Message) -> None:
        self._ops.append(lambda: self._store_now(msg))

    def _store_now(self, msg: Message) -> None:
        try:
            self._consumer.store_offsets(msg)
        except KafkaException as exc:
            # The partition was revoked meanwhile; its new owner redelivers from the committed offset.
            log.info("offset of %s[%s]@%s not stored: %s", msg.topic(), msg.partition(), msg.offset(), exc)

    async def handle(self, msg: Message) -> None:
        """Deliver (or park, or dead-letter) one record; its offset is stored only afterwards."""
        raw_headers = msg.headers() or []
        headers = {k: v if isinstance(v, bytes) else str(v or "").encode()
                   for k, v in (raw_headers.items() if isinstance(raw_headers, dict) else raw_headers)}
        retrying = msg.topic() in self._retry_topics
        if retrying:
            due = int(headers.get(H_DUE, b"0") or 0)
            if due > self._now_ms():
                self._hold(msg, due)
                return
        try:
            completion = self._codecs.completion.decode_event(msg.value())
        except DecodeError as exc:
            # The dispatcher is the only consumer of the completion topic in the product (the completion
            # role projects what it publishes without reading it back), so it dead-letters what it cannot read.
            await self._dead_letter(msg, headers, exc.reason, str(exc))
            self._store(msg)
            return
        url = completion.webhook_url
        if url:
            await self._deliver(msg, headers, completion, url)
        self._store(msg)

    async def _deliver(self, msg: Message, headers: dict[str, bytes], completion: JobCompletion, url: str) -> None:
        job_id = completion.job_id
        attempt = int(headers.get(H_ATTEMPT, b"1") or 1)
        history: list[dict[str, Any]] = json.loads(headers.get(H_LOG, b"[]") or b"[]")
        with span("voicenote.webhook", completion.trace_parent, {"voicenote.job_id": job_id, "voicenote.attempt": attempt},
                  kind=SpanKind.CLIENT) as attempt_span:
            outcome: AttemptOutcome = await self._sender.attempt(url, message_id(job_id), webhook_payload(completion))
            http_outcome(attempt_span, outcome.status_code, outcome.ok, outcome.summary)
        history.append({"attempt": attempt, "at": self._now_ms(), "status_code": outcome.status_code,
                        "result": outcome.summary})
        if outcome.ok:
            await self._record(job_id, WEBHOOK_DELIVERED, attempt, outcome)
            self._metrics.outcome(WEBHOOK_DELIVERED)
            return
        if outcome.permanent or attempt >= self._hooks.attempts:
            state = WEBHOOK_REFUSED if outcome.permanent else WEBHOOK_FAILED
            reason = outcome.summary if outcome.permanent else f"{attempt} attempts failed; last: {outcome.summary}"
            await self._dead_letter(msg, {**headers, H_ATTEMPT: str(attempt).encode(), H_LOG: json.dumps(history).encode()},
                                    f"webhook_{state}", reason)
            await self._record(job_id, state, attempt, outcome)
            self._metrics.outcome(state)
            return
        delay = scheduled_delay(attempt, schedule=self._hooks.retry_schedule_seconds, base=self._hooks.backoff_base_seconds,
                                cap=self._hooks.backoff_max_seconds, jitter=self._hooks.jitter, rng=self._rng)
        topic = self._retry_topics[retry_tier(attempt, len(self._retry_topics))]
        due = self._now_ms() + int(delay * 1000)
        await self._producer.send(topic, msg.value() or b"", key=job_id.encode(), headers=[
            (H_ATTEMPT, str(attempt + 1).encode()),
            (H_DUE, str(due).encode()),
            (H_LOG, json.dumps(history).encode()),
        ])
        await self._record(job_id, WEBHOOK_RETRYING, attempt, outcome, next_attempt_at=due)
        self._metrics.outcome(WEBHOOK_RETRYING)
        log.info("webhook for %s failed (attempt %d: %s); retry in %.1fs via %s", job_id, attempt, outcome.summary, delay, topic)

    async def _record(self, job_id: str, state: str, attempt: int, outcome: AttemptOutcome, *,
                      next_attempt_at: int | None = None) -> None:
        """The job's webhook state after an attempt: on the deliveries topic (acknowledged first, so what Redis shows
        is on the topic too, and a rebuild restores it), then on the job record."""
        error = None if outcome.ok else outcome.summary
        event = WebhookDelivery(job_id=job_id, webhook_id=message_id(job_id), status=state, attempt=attempt,
                                attempted_at=self._now_ms(), status_code=outcome.status_code, error=error,
                                next_attempt_at=next_attempt_at)
        await self._producer.send(self._deliveries, self._codecs.webhook_delivery.encode_event(event), key=job_id.encode())
        await self._jobs.record_webhook(job_id, state, attempt, error or "")

    async def _dead_letter(self, msg: Message, headers: dict[str, bytes], error_type: str, error_message: str) -> None:
        assert self._catalog.webhook_dead_letter is not None
        ts_type, ts = msg.timestamp()
        letter = DeadLetter(
            source_topic=str(msg.topic()), source_partition=int(msg.partition() or 0), source_offset=int(msg.offset() or 0),
            source_timestamp=ts if ts_type and ts > 0 else None, key=msg.key(), value=msg.value(),
            headers=headers, consumer="webhooks", error_type=error_type, error_message=error_message[:4000],
            failed_at=self._now_ms(),
        )
        topic = self._catalog.webhook_dead_letter.name if error_type.startswith("webhook_") else self._catalog.dead_letter.name
        await self._producer.send(topic, self._codecs.dead_letter.encode_event(letter), key=msg.key())
        log.warning("webhook record %s[%d]@%d dead-lettered: %s", msg.topic(), msg.partition(), msg.offset(), error_message)


