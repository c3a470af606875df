"""Kafka clients: the one place settings become client config (both stacks), an asyncio-friendly idempotent
producer and topic provisioning."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.topics import TopicSpec
from voicenote.errors import ConfigError, DependencyUnavailable, PublishError
from voicenote.settings import KafkaSettings

log = logging.getLogger(__name__)

# What both stacks speak: aiokafka (the workers, through Faust) knows no other SASL mechanism.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def client_config(kafka: KafkaSettings, stack: Literal["confluent", "aiokafka"] = "confluent") -> dict[str, Any]:
    """The connection and security settings of ``kafka`` in one client stack's dialect.

    ``confluent``: librdkafka properties (the API, the webhook dispatcher, ops tools). ``aiokafka``: the
    keyword arguments of aiokafka's clients (the Faust workers; see stream_workers/kafka_security.py).
    Both are resolved here from one reading of the settings, so a cluster that needs SASL or TLS is
    reachable by every process or refused by all with the same message, never by the API alone.
    """
    protocol = kafka.security_protocol
    sasl = protocol.startswith("SASL")
    mechanism = (kafka.sasl_mechanism or "PLAIN") if sasl else None
    password = kafka.sasl_password.get_secret_value() if kafka.sasl_password is not None else None
    if sasl:
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"kafka.sasl_mechanism {mechanism!r} is not one the workers speak: {sorted(SASL_MECHANISMS)}")
        if not kafka.sasl_username or password is None:
            raise ConfigError(f"kafka.security_protocol={protocol} needs kafka.sasl_username and kafka.sasl_password")
    tls = protocol.endswith("SSL")
    if stack == "confluent":
        conf: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap_servers, "security.protocol": protocol}
        if sasl:
            conf.update({"sasl.mechanism": mechanism, "sasl.username": kafka.sasl_username, "sasl.password": password})
        if tls and kafka.ssl_ca_location:
            conf["ssl.ca.location"] = kafka.ssl_ca_location
        return conf
    return {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "sasl_plain_username": kafka.sasl_username if sasl else None,
        "sasl_plain_password": password if sasl else None,
        # Built here so a CA bundle that does not load stops start-up rather than the first connection.
        "ssl_context": ssl.create_default_context(cafile=kafka.ssl_ca_location) if tls else None,
    }


class AsyncProducer:
    """An idempotent producer whose ``send`` resolves when the broker has acknowledged the record.

    An idempotent producer whose broker restarted without its state (in-memory Tansu) can be stuck:
    in a fatal error ("Local: Fatal error" on every later send), or with every record timing out while
    the broker answers others (measured against Tansu 0.6: a fresh producer sent at once). It does not
    recover by itself. So a fatal error (``error_cb``) or a record that timed out marks the producer
    stuck; :meth:`ping` answers False and :meth:`send` refuses until the poll thread has rebuilt it.
    Records in flight fail (each caller gets a PublishError); later ones go out on the new producer.
    """

    REBUILD_PAUSE_SECONDS = 0.5

    def __init__(self, settings: KafkaSettings, **overrides: Any) -> None:
        self._conf: dict[str, Any] = {
            **settings.client_config(),
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
        }
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
        if err.fatal() or err.code() == KafkaError._MSG_TIMED_OUT:
            self._fatal = self._fatal or err.str()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)
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
        headers: list[tuple[str, bytes]] | None = None,
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
        self._poller.join(timeout=1.0)
        return int(remaining)


def _settle(fut: asyncio.Future[Message], msg: Message | None, exc: Exception | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(msg)  # type: ignore[arg-type]


def admin_client(settings: KafkaSettings) -> AdminClient:
    return AdminClient(settings.client_config())


def ensure_topics(settings: KafkaSettings, specs: Iterable[TopicSpec], *, timeout: float = 15.0) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise DependencyUnavailable("kafka", f"cannot list topics at {settings.bootstrap_servers}: {exc}") from exc
    wanted = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=-1, config=s.config())
        for s in specs
        if s.name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, fut in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise DependencyUnavailable("kafka", f"cannot create topic {name}: {exc}") from exc
    return created


@dataclass(frozen=True)
class TopicCheck:
    """The catalog against the broker: topics it lacks, and topics with another partition count."""

    missing: list[str]
    wrong_partitions: list[tuple[str, int, int]]  # (topic, partitions found, partitions the catalog wants)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.wrong_partitions


def check_topics(settings: KafkaSettings, specs: Iterable[TopicSpec], *, timeout: float = 15.0) -> TopicCheck:
    """Whether every topic of ``specs`` exists with its partition count (nothing is created or changed).

    A topic whose metadata carries an error (not yet created, no leader yet) counts as missing. A topic
    with another partition count was made by something else: typically a broker that auto-creates
    topics on the first produce or subscribe (1 partition), before ``voicenote topics create`` ran.
    """
    try:
        topics = admin_client(settings).list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise DependencyUnavailable("kafka", f"cannot list topics at {settings.bootstrap_servers}: {exc}") from exc
    missing, wrong = [], []
    for spec in specs:
        meta = topics.get(spec.name)
        if meta is None or meta.error is not None:
            missing.append(spec.name)
        elif len(meta.partitions) != spec.partitions:
            wrong.append((spec.name, len(meta.partitions), spec.partitions))
    return TopicCheck(missing, wrong)


def broker_answers(settings: KafkaSettings, timeout: float = 2.0) -> bool:
    """Whether the cluster answers a metadata request within ``timeout``."""
    try:
        admin_client(settings).list_topics(timeout=timeout)
        return True
    except KafkaException:
        return False


OFFSET_BEGINNING = -2


def read_to_end(settings: KafkaSettings, topic: str, *, starts: Mapping[int, int] | None = None,
                stops: Mapping[int, int] | None = None, timeout: float = 300.0,
                group_prefix: str = "voicenote-read", missing_ok: bool = False) -> Iterator[Message]:
    """Every record of ``topic`` from ``starts`` (per partition; default every partition from its beginning)
    up to the partition's end as it was when reading began, without joining a group (blocking).

    The end of each partition is fixed at the start: the larger of its high watermark (ListOffsets) and the
    high watermark of the first fetch answer for it. Both are the same on Kafka; Tansu answers ListOffsets
    with the number of record batches, not records, so there the fetch answer's is the one that counts
    (docs/architecture.md). Records written after that are not read, and a partition also ends at its
    ``stops`` offset (exclusive) or at partition EOF. Reading waits for every partition's end however
    long the broker takes to answer, up to ``timeout`` seconds in all: past it, DependencyUnavailable
    (never a silent partial read). A topic that does not exist is an error, or reads as empty with ``missing_ok``.
    """
    consumer = Consumer({**settings.client_config(), "group.id": f"{group_prefix}-{time.time_ns()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    deadline = time.monotonic() + timeout
    try:
        meta = consumer.list_topics(topic, timeout=10.0).topics.get(topic)
        if meta is None or meta.error is not None:
            if missing_ok:
                return
            raise DependencyUnavailable("kafka", f"topic {topic} does not exist (create it with `voicenote topics create`)")
        wanted = sorted(starts) if starts is not None else sorted(meta.partitions)
        ends: dict[int, int] = {}  # partition -> the end taken at the start (exclusive)
        assignment = []
        for partition in wanted:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10.0, cached=False)
            start = starts[partition] if starts is not None else OFFSET_BEGINNING
            stop = (stops or {}).get(partition)
            if high <= low or (stop is not None and 0 <= stop <= max(start, low)):
                continue  # empty (no batch either, so on Tansu too), or nothing between start and stop
            ends[partition] = min(high, stop) if stop is not None else high
            assignment.append(TopicPartition(topic, partition, start))
        listed = dict(ends)
        seen_fetch: set[int] = set()
        open_partitions = set(ends)
        if assignment:
            consumer.assign(assignment)
        while open_partitions:
            if time.monotonic() > deadline:
                raise DependencyUnavailable(
                    "kafka", f"reading {topic}: {len(open_partitions)} of {len(wanted)} partitions not read to their end "
                             f"within {timeout:g}s (partitions {sorted(open_partitions)[:8]}); nothing partial is reported")
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            partition = msg.partition()
            if partition is None or partition not in open_partitions:
                continue
            if partition not in seen_fetch:  # the first fetch answer for it: its high watermark, by record count
                seen_fetch.add(partition)
                _low, fetched_high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                stop = (stops or {}).get(partition)
                ends[partition] = max(listed[partition], fetched_high if fetched_high >= 0 else 0)
                if stop is not None:
                    ends[partition] = min(ends[partition], stop)
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(partition)
                    continue
                raise DependencyUnavailable("kafka", f"reading {topic}[{partition}]: {error}")
            offset = msg.offset() or 0
            if offset >= ends[partition]:
                open_partitions.discard(partition)  # written after reading began, or past ``stops``
                continue
            yield msg
            if offset + 1 >= ends[partition]:
                open_partitions.discard(partition)
    except KafkaException as exc:
        raise DependencyUnavailable("kafka", f"reading {topic}: {exc}") from exc
    finally:
        consumer.close()
