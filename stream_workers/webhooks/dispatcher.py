"""The webhook dispatcher: completions (and due retries) in, signed deliveries out.

A failed attempt is not waited for here: the completion goes to the retry topic of its retry number
with a ``webhook-due-at`` header. Records of one retry topic wait nearly equally long, so a partition's
head is always the next due; the dispatcher pauses that partition until then (seeking back to the head)
and keeps serving every other partition. After the last attempt, or at once when the policy refuses the
URL, the completion goes to the webhook dead-letter topic with every attempt listed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from schemas.codec import Codecs
from schemas.errors import DecodeError
from schemas.topics import TopicCatalog
from stream_workers.webhooks.delivery import AttemptOutcome, WebhookSender
from stream_workers.webhooks.schedule import retry_delay, retry_tier
from voicenote.errors import DependencyUnavailable
from voicenote.jobstore import JobStore
from voicenote.kafka import AsyncProducer
from voicenote.settings import Settings, WebhookSettings

log = logging.getLogger(__name__)

H_ATTEMPT = "webhook-attempt"
H_DUE = "webhook-due-at"
H_LOG = "webhook-log"


def webhook_payload(completion: dict[str, Any]) -> bytes:
    """The JSON body: the completion as ``data``, in the Standard Webhooks ``{type, timestamp, data}`` shape."""
    body = {
        "type": f"voicenote.job.{completion['status']}",
        "timestamp": datetime.fromtimestamp(completion["completed_at"] / 1000, tz=UTC).isoformat(),
        "data": completion,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def message_id(job_id: str) -> str:
    """The ``webhook-id``: the same on every attempt, so receivers can drop duplicates."""
    return f"msg_{job_id}"


class WebhookDispatcher:
    def __init__(self, settings: Settings, catalog: TopicCatalog, codecs: Codecs, jobs: JobStore, sender: WebhookSender,
                 producer: AsyncProducer, *, rng: random.Random | None = None, clock: Callable[[], float] = time.time) -> None:
        assert catalog.webhook_dead_letter is not None and catalog.webhook_retries
        self._hooks: WebhookSettings = settings.webhooks
        self._catalog = catalog
        self._codecs = codecs
        self._jobs = jobs
        self._sender = sender
        self._producer = producer
        self._rng = rng or random.Random()
        self._clock = clock
        self._retry_topics = [spec.name for spec in catalog.webhook_retries]
        self._consumer = Consumer({
            **settings.kafka.client_config(),
            "group.id": f"{settings.worker.group_id}-webhooks",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,  # an offset is stored only once its record is fully handled
            "session.timeout.ms": settings.kafka.session_timeout_ms,
            "heartbeat.interval.ms": settings.kafka.heartbeat_interval_ms,
            "fetch.wait.max.ms": settings.kafka.fetch_max_wait_ms,
        })
        self._paused: dict[tuple[str, int], tuple[int, TopicPartition]] = {}  # (topic, partition) -> (due ms, head)

    async def run(self, stop: asyncio.Event) -> None:
        self._consumer.subscribe([self._catalog.completions.name, *self._retry_topics], on_revoke=self._on_revoke)
        try:
            while not stop.is_set():
                self._resume_due()
                msg = await asyncio.to_thread(self._consumer.poll, self._poll_timeout())
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise DependencyUnavailable("kafka", f"webhook consumer: {error}")
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("webhook consumer: %s", error)
                    continue
                await self.handle(msg)
        finally:
            await asyncio.to_thread(self._consumer.close)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._paused.pop((tp.topic, tp.partition), None)

    def _poll_timeout(self) -> float:
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
        topic, partition, offset = str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)
        head = TopicPartition(topic, partition, offset)
        self._consumer.pause([head])
        self._consumer.seek(head)
        self._paused[(topic, partition)] = (due_ms, head)

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
            completion = self._codecs.completion.decode(msg.value())
        except DecodeError as exc:
            if retrying:
                await self._dead_letter(msg, headers, "undecodable", str(exc))
            # An undecodable completion is dead-lettered once, by the status agent.
            self._consumer.store_offsets(msg)
            return
        url = completion.get("webhook_url")
        if url:
            await self._deliver(msg, headers, completion, url)
        self._consumer.store_offsets(msg)

    async def _deliver(self, msg: Message, headers: dict[str, bytes], completion: dict[str, Any], url: str) -> None:
        job_id = completion["job_id"]
        attempt = int(headers.get(H_ATTEMPT, b"1") or 1)
        history: list[dict[str, Any]] = json.loads(headers.get(H_LOG, b"[]") or b"[]")
        outcome: AttemptOutcome = await self._sender.attempt(url, message_id(job_id), webhook_payload(completion))
        history.append({"attempt": attempt, "at": self._now_ms(), "status_code": outcome.status_code,
                        "result": outcome.summary})
        if outcome.ok:
            await self._jobs.record_webhook(job_id, "delivered", attempt)
            return
        if outcome.permanent or attempt >= self._hooks.max_attempts:
            state = "refused" if outcome.permanent else "failed"
            reason = outcome.summary if outcome.permanent else f"{attempt} attempts failed; last: {outcome.summary}"
            await self._dead_letter(msg, {**headers, H_ATTEMPT: str(attempt).encode(), H_LOG: json.dumps(history).encode()},
                                    f"webhook_{state}", reason)
            await self._jobs.record_webhook(job_id, state, attempt, outcome.summary)
            return
        delay = retry_delay(attempt, base=self._hooks.backoff_base_seconds, cap=self._hooks.backoff_max_seconds,
                            jitter=self._hooks.jitter, rng=self._rng)
        topic = self._retry_topics[retry_tier(attempt, len(self._retry_topics))]
        await self._producer.send(topic, msg.value() or b"", key=job_id.encode(), headers=[
            (H_ATTEMPT, str(attempt + 1).encode()),
            (H_DUE, str(self._now_ms() + int(delay * 1000)).encode()),
            (H_LOG, json.dumps(history).encode()),
        ])
        await self._jobs.record_webhook(job_id, "retrying", attempt, outcome.summary)
        log.info("webhook for %s failed (attempt %d: %s); retry in %.1fs via %s", job_id, attempt, outcome.summary, delay, topic)

    async def _dead_letter(self, msg: Message, headers: dict[str, bytes], error_type: str, error_message: str) -> None:
        assert self._catalog.webhook_dead_letter is not None
        ts_type, ts = msg.timestamp()
        record = {
            "source_topic": msg.topic(), "source_partition": msg.partition(), "source_offset": msg.offset(),
            "source_timestamp": ts if ts_type and ts > 0 else None, "key": msg.key(), "value": msg.value(),
            "headers": headers, "consumer": "webhooks", "error_type": error_type, "error_message": error_message[:4000],
            "failed_at": self._now_ms(),
        }
        topic = self._catalog.webhook_dead_letter.name if error_type.startswith("webhook_") else self._catalog.dead_letter.name
        await self._producer.send(topic, self._codecs.dead_letter.encode(record), key=msg.key())
        log.warning("webhook record %s[%d]@%d dead-lettered: %s", msg.topic(), msg.partition(), msg.offset(), error_message)


