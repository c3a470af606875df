"""The asyncio-friendly idempotent producer the API and the webhooks worker publish with."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from voicenote.errors import PublishError
from voicenote.kafka.clients import producer_config
from voicenote.settings import KafkaSettings

log = logging.getLogger(__name__)

# A record failing with one of these leaves the producer stuck: timed out (see AsyncProducer), or refused because the
# broker no longer knows the producer's id and epoch. Tansu restarted on memory:// answered every later record with
# PRODUCER_FENCED ("There is a newer producer with the same transactionalId...") and the API refused every request
# with 503 until it was restarted (issue 25, defect 2); librdkafka does not raise those as fatal without transactions.
_STUCK_CODES = frozenset({KafkaError._MSG_TIMED_OUT, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
                          KafkaError.UNKNOWN_PRODUCER_ID, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
                          KafkaError.INVALID_PRODUCER_ID_MAPPING})


class AsyncProducer:
    """An idempotent producer whose ``send`` resolves when the broker has acknowledged the record.

    An idempotent producer whose broker restarted without its state (in-memory Tansu) can be stuck:
    in a fatal error ("Local: Fatal error" on every later send), or with every record timing out while
    the broker answers others (measured against Tansu 0.6: a fresh producer sent at once). It does not
    recover by itself. So a fatal error (``error_cb``) or a record that timed out or was refused for its producer id
    or epoch (:data:`_STUCK_CODES`) marks the producer stuck; :meth:`ping` answers False and :meth:`send` refuses until the poll thread has rebuilt it.
    Records in flight fail (each caller gets a PublishError); later ones go out on the new producer.
    """

    REBUILD_PAUSE_SECONDS = 0.5
    # poll() returns as soon as a delivery report or an error is served, so this bounds only how soon the thread
    # sees close(); at 50 ms the idle API and webhook worker spent a third of their CPU waking it (issue 24).
    POLL_SECONDS = 0.5

    def __init__(self, settings: KafkaSettings, **overrides: Any) -> None:
        self._conf: dict[str, Any] = producer_config(settings, {
            "enable.idempotence": True,  # acks=all, retries without duplicates or reordering
            "linger.ms": 2,
            "compression.type": "lz4",
            "delivery.timeout.ms": settings.delivery_timeout_ms,
            "message.max.bytes": 8 * 1_048_576,
            # Topics come from the catalog only: a broker that auto-creates (Tansu always does) would
            # otherwise make a missing topic with its default partitions on the first send.
            "allow.auto.create.topics": False,
            **overrides,
            "error_cb": self._on_error,
        })
        self._fatal: str | None = None
        self.rebuilds = 0
        self._producer = Producer(self._conf)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    @property
    def fatal(self) -> str | None:
        """The fatal error the current producer is stuck in, if any (cleared by the rebuild)."""
        return self._fatal

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("kafka producer fatal error: %s; rebuilding the producer", err.str())
            self._fatal = err.str()

    def _on_failed_delivery(self, err: KafkaError) -> None:
        if err.fatal() or err.code() in _STUCK_CODES:
            self._fatal = self._fatal or err.str()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(self.POLL_SECONDS)
            if self._fatal is not None:
                self._rebuild()

    def _rebuild(self) -> None:
        old = self._producer
        old.purge()
        old.flush(0)  # serves the purged records' delivery reports: their callers get a PublishError
        time.sleep(self.REBUILD_PAUSE_SECONDS)  # a broker still restarting is not hammered
        self._producer = Producer(self._conf)
        self._fatal = None
        self.rebuilds += 1
        log.warning("kafka producer rebuilt after a fatal error (%d so far)", self.rebuilds)

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,  # as confluent_kafka takes them
    ) -> Message:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Message] = loop.create_future()

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self._on_failed_delivery(err)
                exc: Exception = PublishError(f"{topic}: {err.str()}")
                loop.call_soon_threadsafe(_settle, fut, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, fut, msg, None)

        if self._fatal is not None:
            raise PublishError(f"{topic}: the producer is being rebuilt after a fatal error ({self._fatal}); retry")
        try:
            self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
        except BufferError as exc:
            raise PublishError(f"producer queue full: {exc}") from exc
        except KafkaException as exc:
            raise PublishError(f"{topic}: {exc}") from exc
        return await fut

    async def ping(self, timeout: float = 2.0) -> bool:
        """Whether the cluster answers a metadata request and the producer can send (is not fatal)."""
        if self._fatal is not None:
            return False
        try:
            await asyncio.to_thread(self._producer.list_topics, timeout=timeout)
            return True
        except KafkaException:
            return False

    def close(self, timeout: float = 5.0) -> int:
        """Flush what is queued and stop; returns the number of records still undelivered."""
        remaining = self._producer.flush(timeout)
        self._stop.set()
        self._poller.join(timeout=2 * self.POLL_SECONDS)
        return int(remaining)


def _settle(fut: asyncio.Future[Message], msg: Message | None, exc: Exception | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(msg)  # type: ignore[arg-type]

