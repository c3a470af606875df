"""The synchronous client: ``submit`` requests, ``flush``, then read ``completions`` or ``wait`` for one job.

It takes a librdkafka configuration dict (the same keys as confluent-kafka's ``Producer`` and
``Consumer``: ``bootstrap.servers``, ``security.protocol``, ``sasl.*``, ``ssl.*``) and writes requests
exactly as the Voicenote API does: Avro (single-object encoding, or the Confluent framing with a
schema registry), key = job id, a W3C ``traceparent`` header, an idempotent producer.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from voicenote_client._validation import request_problems
from voicenote_client.codec import Codecs, DecodeError, EncodeError, HttpSchemaRegistry
from voicenote_client.models import route

TERMINAL = ("succeeded", "failed", "cancelled")
CLOCK_SLACK_MS = 60_000  # ``wait`` reads from this long before the job was submitted: workers' clocks may lag ours

DeliveryCallback = Callable[[KafkaError | None, str], None]


class EventCodec(Protocol):
    def encode(self, record: Mapping[str, Any]) -> bytes: ...

    def decode(self, data: bytes | None) -> dict[str, Any]: ...


class EventCodecs(Protocol):
    """What the client needs of a codec: ``voicenote_client.Codecs``, or any object with these two codecs."""

    @property
    def request(self) -> EventCodec: ...

    @property
    def completion(self) -> EventCodec: ...


class Router(Protocol):
    """Where a model's requests go and which voice id a name means (``StockRouter``: a stock deployment's)."""

    def resolve(self, model: str, voice: str) -> tuple[str, str]:
        """(model id, voice id) for the names asked for; ValueError for an unknown model or voice."""
        ...

    def topic(self, model_id: str) -> str:
        """The request topic of ``model_id`` (a model id ``resolve`` returned; ``tts-1`` names the default topic)."""
        ...


class StockRouter:
    """The model table of ``voicenote_client.models``, under the deployment's topic prefix."""

    def __init__(self, topic_prefix: str = "") -> None:
        self.topic_prefix = topic_prefix

    def resolve(self, model: str, voice: str) -> tuple[str, str]:
        target = route(model)
        return target.id, target.resolve_voice(voice)

    def topic(self, model_id: str) -> str:
        return route(model_id).topic(self.topic_prefix)


class VoicenoteClientError(Exception):
    """Every error this package raises derives from it."""


class InvalidRequest(VoicenoteClientError, ValueError):
    """The workers would refuse the request; nothing was published."""


class PublishError(VoicenoteClientError):
    """The broker did not acknowledge (all of) the submitted requests."""


class BrokerUnavailable(VoicenoteClientError, ConnectionError):
    """The cluster cannot be read (or the completion topic does not exist)."""


class JobTimeout(VoicenoteClientError, TimeoutError):
    """No completion for the job arrived in time (it may still come)."""


@dataclass(frozen=True)
class Completion:
    """One job's outcome from the completion topic; ``record`` keeps every field of the event."""

    job_id: str
    status: str  # succeeded, failed or cancelled
    created_at: int  # epoch ms
    completed_at: int
    audio_url: str | None = None
    format: str = "wav"
    duration_ms: int = 0
    error_code: str | None = None
    error_message: str | None = None
    record: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Completion:
        return cls(job_id=record["job_id"], status=record["status"], created_at=record["created_at"],
                   completed_at=record["completed_at"], audio_url=record.get("audio_url"), format=record.get("format") or "wav",
                   duration_ms=record.get("duration_ms") or 0, error_code=record.get("error_code"),
                   error_message=record.get("error_message"), record=dict(record))


def new_job_id() -> str:
    """A job id in the API's shape (``job_`` + 22 characters of [A-Za-z0-9])."""
    return "job_" + secrets.token_urlsafe(16).replace("-", "x").replace("_", "y")


def new_traceparent() -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


class _CompletionReader:
    """One consumer of the completion topic, stepped a poll at a time (by a loop or by an asyncio task)."""

    END = object()  # until_end reached, or idle_timeout passed

    def __init__(self, client: VoicenoteClient, *, group_id: str | None, since_ms: int | None, from_beginning: bool,
                 until_end: bool, idle_timeout: float | None,
                 on_undecodable: Callable[[Message, DecodeError], None] | None) -> None:
        self.client, self.group_id, self.until_end, self.idle_timeout = client, group_id, until_end, idle_timeout
        self.on_undecodable = on_undecodable
        topic = client.completions_topic
        conf: dict[str, Any] = {**client.config, **client.consumer_config, "enable.partition.eof": True,
                                "group.id": group_id or f"voicenote-client-{uuid.uuid4().hex[:12]}"}
        if group_id:
            conf.update({"enable.auto.commit": True, "enable.auto.offset.store": False,
                         "auto.offset.reset": "earliest" if from_beginning else "latest"})
        else:
            conf["enable.auto.commit"] = False
        self.consumer = Consumer(conf)
        try:
            meta = self.consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise BrokerUnavailable(f"topic {topic} does not exist at {client.config.get('bootstrap.servers')}")
            self.partitions = sorted(meta.partitions)
            if group_id:
                self.consumer.subscribe([topic])
            elif since_ms is not None:
                found = self.consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in self.partitions], timeout=10)
                self.consumer.assign([TopicPartition(t.topic, t.partition, t.offset if t.offset >= 0 else -1) for t in found])
            else:
                self.consumer.assign([TopicPartition(topic, p, -2 if from_beginning else -1) for p in self.partitions])
        except KafkaException as exc:
            self.consumer.close()
            raise BrokerUnavailable(f"reading {topic}: {exc}") from exc
        except BaseException:
            self.consumer.close()
            raise
        self.at_end: set[int] = set()
        self.last = time.monotonic()
        self._pending: Message | None = None  # the last record read with a group, stored once the caller is done with it

    def step(self, timeout: float = 0.2) -> Completion | object | None:
        """The next completion, END, or None when nothing came within ``timeout``."""
        try:
            msg = self.consumer.poll(timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(f"reading {self.client.completions_topic}: {exc}") from exc
        if msg is None:
            idle = self.idle_timeout is not None and time.monotonic() - self.last > self.idle_timeout
            return self.END if idle else None
        error = msg.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self.at_end.add(msg.partition() or 0)
                return self.END if self.until_end and self.at_end >= set(self.partitions) else None
            raise BrokerUnavailable(f"reading {self.client.completions_topic}: {error}")
        self.last = time.monotonic()
        self.at_end.discard(msg.partition() or 0)
        try:
            completion = self.client.completion_type.from_record(self.client.codecs.completion.decode(msg.value()))
        except self.client.decode_errors as exc:
            if self.on_undecodable is None:
                raise
            self.on_undecodable(msg, exc)  # type: ignore[arg-type]  # a DecodeError, or what decode_errors names
            completion = None
        if self.group_id:
            self._pending = msg  # the generators store its offset only once the loop body ran for it (at least once)
        return completion

    def done_with_last(self) -> None:
        if self._pending is not None:
            self.consumer.store_offsets(self._pending)
            self._pending = None

    def close(self) -> None:
        self.consumer.close()


class VoicenoteClient:
    """Publishes requests and reads completions on one cluster; ``close`` (or ``with``) flushes.

    ``config`` is a librdkafka configuration dict used by both the producer and the consumers;
    ``producer_config``/``consumer_config`` add keys for one of them. ``topic_prefix`` is the deployment's
    (``VOICENOTE_KAFKA__TOPIC_PREFIX``). With ``schema_registry_url`` the requests carry the Confluent
    framing and registry-framed completions can be read.

    For programs that bring their own wire setup (the server distribution's ``voicenote.client`` does):
    ``codecs`` replaces the codec (any :class:`EventCodecs`; ``encode_errors``/``decode_errors`` name the
    exceptions its ``encode``/``decode`` raise for a bad record), ``router`` the model table
    (:class:`Router`), and a subclass may set ``completion_type`` (a :class:`Completion` subclass).
    """

    completion_type: type[Completion] = Completion

    def __init__(self, config: Mapping[str, Any], *, topic_prefix: str = "", schema_registry_url: str | None = None,
                 producer_config: Mapping[str, Any] | None = None, consumer_config: Mapping[str, Any] | None = None,
                 codecs: EventCodecs | None = None, router: Router | None = None,
                 encode_errors: tuple[type[Exception], ...] = (EncodeError,),
                 decode_errors: tuple[type[Exception], ...] = (DecodeError,)) -> None:
        if "bootstrap.servers" not in config:
            raise ValueError("config needs 'bootstrap.servers' (a librdkafka configuration dict)")
        self.config = dict(config)
        self.producer_config = {"enable.idempotence": True, **(producer_config or {})}
        self.consumer_config = dict(consumer_config or {})
        self.topic_prefix = topic_prefix
        self.router: Router = router or StockRouter(topic_prefix)
        self.requests_topic = self.router.topic("tts-1")  # the default model's (each request goes to its model's)
        self.completions_topic = f"{topic_prefix}voicenote.completions.v1"
        self._registry = HttpSchemaRegistry(schema_registry_url) if schema_registry_url and codecs is None else None
        self.codecs: EventCodecs = codecs or Codecs(self._registry)
        self.encode_errors, self.decode_errors = encode_errors, decode_errors
        self._producer: Producer | None = None
        self._failures: list[str] = []
        self._submitted_at: dict[str, int] = {}

    def __enter__(self) -> VoicenoteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, text: str, *, voice: str = "default", format: str = "wav", job_id: str | None = None,
                model: str = "tts-1", speed: float = 1.0, priority: str = "batch", webhook_url: str | None = None,
                attributes: Mapping[str, str] | None = None, trace_parent: str | None = None, **fields: Any) -> dict[str, Any]:
        """The request event ``submit`` would send, checked with the workers' rules (InvalidRequest otherwise).

        ``fields`` sets any other field of the request schema (``temperature``, ``seed``, ``use_cache``...).
        The voice name asked for is kept in ``attributes["voice_requested"]``, as the API does.
        """
        try:
            model_id, voice_id = self.router.resolve(model, voice)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        record: dict[str, Any] = {
            "job_id": job_id or new_job_id(), "created_at": int(time.time() * 1000), "text": text,
            "voice": voice_id, "format": format, "speed": speed, "model": model_id, "priority": priority,
            "webhook_url": webhook_url, "trace_parent": trace_parent or new_traceparent(),
            "attributes": {"voice_requested": voice, "model_requested": model, **(attributes or {})}, **fields,
        }
        problems = request_problems(record)
        if problems:
            raise InvalidRequest("; ".join(problems))
        return record

    def encode(self, record: Mapping[str, Any]) -> bytes:
        try:
            return self.codecs.request.encode(record)
        except self.encode_errors as exc:
            raise InvalidRequest(str(exc)) from None

    def submit(self, text: str, *, on_delivery: DeliveryCallback | None = None,
               headers: Mapping[str, str | bytes] | None = None, **options: Any) -> str:
        """Queue one request and return its job id; ``flush`` (or ``close``) waits for the broker.

        ``on_delivery(err, job_id)`` runs once the broker acknowledged (``err`` None) or refused the record
        (``err`` a ``confluent_kafka.KafkaError``), from inside ``submit``, ``poll`` or ``flush``.
        ``options`` are those of :meth:`request`.
        """
        record = self.request(text, **options)
        self._produce(record, self.encode(record), headers, self._delivery_report(record["job_id"], on_delivery))
        return str(record["job_id"])

    publish = submit  # the name voicenote.client (the server distribution's client) uses

    def poll(self, timeout: float = 0.0) -> int:
        """Serve pending delivery callbacks; the number served."""
        return self._producer.poll(timeout) if self._producer is not None else 0

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every submitted request is acknowledged; PublishError names what was not."""
        if self._producer is None:
            return
        remaining = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        if remaining:
            raise PublishError(f"{remaining} requests not acknowledged within {timeout}s by {self.config['bootstrap.servers']}")
        if failures:
            raise PublishError(f"{len(failures)} requests refused by the broker: {failures[:3]}")

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then let the producer go (what is still unacknowledged is dropped and reported)."""
        try:
            self.flush(timeout)
        finally:
            if self._producer is not None:
                self._producer.purge()
                self._producer.flush(0)
                self._producer = None
            if self._registry is not None:
                self._registry.close()

    def completions(self, *, group_id: str | None = None, since_ms: int | None = None, from_beginning: bool = False,
                    until_end: bool = False, idle_timeout: float | None = None,
                    on_undecodable: Callable[[Message, DecodeError], None] | None = None) -> Iterator[Completion]:
        """Completions as they arrive.

        With ``group_id`` the consumer group keeps the position (at least once: a completion counts as read
        once the loop body ran for it); without one reading starts at ``since_ms``, the beginning
        (``from_beginning``) or the end. ``until_end`` stops at the end of every partition, ``idle_timeout``
        after that many seconds without a record. An undecodable record raises DecodeError unless
        ``on_undecodable`` takes it.
        """
        reader = self._reader(group_id=group_id, since_ms=since_ms, from_beginning=from_beginning, until_end=until_end,
                              idle_timeout=idle_timeout, on_undecodable=on_undecodable)
        try:
            while True:
                got = reader.step()
                if got is reader.END:
                    return
                if isinstance(got, Completion):
                    yield got
                reader.done_with_last()
        finally:
            reader.close()

    def wait(self, job_id: str, *, timeout: float = 60.0, since_ms: int | None = None) -> Completion:
        """The completion of ``job_id``; JobTimeout when none arrives within ``timeout`` seconds."""
        since_ms = self._since(job_id, since_ms)
        deadline = time.monotonic() + timeout
        stream = self.completions(since_ms=since_ms, from_beginning=since_ms is None, idle_timeout=timeout,
                                  on_undecodable=lambda _m, _e: None)
        try:
            for completion in stream:
                if completion.job_id == job_id:
                    return completion
                if time.monotonic() > deadline:
                    break
        finally:
            stream.close()  # type: ignore[attr-defined]
        raise JobTimeout(f"no completion for {job_id} on {self.completions_topic} within {timeout:g}s")

    # -- shared with AsyncVoicenoteClient --

    def _since(self, job_id: str, since_ms: int | None) -> int | None:
        if since_ms is None and job_id in self._submitted_at:
            return self._submitted_at[job_id] - CLOCK_SLACK_MS
        return since_ms

    def _reader(self, **options: Any) -> _CompletionReader:
        return _CompletionReader(self, **options)

    def _produce(self, record: Mapping[str, Any], value: bytes, headers: Mapping[str, str | bytes] | None,
                 callback: Callable[[KafkaError | None, Message], None]) -> None:
        job_id, topic = record["job_id"], self.router.topic(record["model"])
        wire_headers = [("traceparent", record["trace_parent"].encode())]
        wire_headers += [(k, v if isinstance(v, bytes) else v.encode()) for k, v in (headers or {}).items()]
        producer = self._ensure_producer()
        try:
            try:
                producer.produce(topic, key=job_id.encode(), value=value, headers=wire_headers, on_delivery=callback)
            except BufferError:
                producer.poll(1.0)  # the local queue is full: serve delivery reports, then try once more
                producer.produce(topic, key=job_id.encode(), value=value, headers=wire_headers, on_delivery=callback)
        except (KafkaException, BufferError) as exc:
            raise PublishError(f"{topic}: {exc}") from exc
        producer.poll(0)
        self._submitted_at[job_id] = record["created_at"]

    def _delivery_report(self, job_id: str, on_delivery: DeliveryCallback | None) -> Callable[[KafkaError | None, Message], None]:
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self._failures.append(f"{job_id}: {err.str()}")
            if on_delivery is not None:
                on_delivery(err, job_id)
        return delivered

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer({**self.config, **self.producer_config})
        return self._producer
