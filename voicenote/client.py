"""A Kafka client for direct publishers and completion consumers (no HTTP API in between).

``VoicenoteClient.publish`` writes a ``SynthesisRequest`` to the request topic the way the API does
(Avro via the schemas codec, key = job_id, idempotent producer, traceparent header), ``completions``
reads ``voicenote.completions.v1`` as :class:`Completion` objects, and ``wait`` returns one job's
completion. docs/client.md has runnable examples.

This is the client of the server distribution (settings, the deployment's model registry, the CLI's
``voicenote submit``/``watch``). Programs that should not install the server use the standalone
``voicenote-client`` (clients/python, ``voicenote_client``): a librdkafka config dict, delivery
callbacks and an asyncio API, over the same wire format.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.clock import now_ms
from schemas.codec import Codecs
from schemas.errors import DecodeError, EncodeError
from schemas.validation import request_problems
from voicenote.errors import DependencyUnavailable, PublishError, VoicenoteError
from voicenote.kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition, event_codecs
from voicenote.kafka import consumer as new_consumer
from voicenote.kafka import producer as new_producer
from voicenote.models import ModelRegistry, UnknownModel, UnknownVoiceName
from voicenote.registered_voices import is_voice_id
from voicenote.settings import EngineKind, KafkaSettings

TERMINAL = ("succeeded", "failed", "cancelled")
# How far before a job's publish time ``wait`` starts reading: completions are stamped by the workers'
# clocks, which may run behind ours.
CLOCK_SLACK_MS = 60_000


class InvalidRequest(VoicenoteError, ValueError):
    """The request would be refused by the workers; nothing was published."""


class JobTimeout(VoicenoteError, TimeoutError):
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
                   completed_at=record["completed_at"], audio_url=record.get("audio_url"), format=record.get("format", "wav"),
                   duration_ms=record.get("duration_ms", 0), error_code=record.get("error_code"),
                   error_message=record.get("error_message"), record=dict(record))


def new_job_id() -> str:
    """A job id in the API's shape (``job_`` + 22 characters of [A-Za-z0-9])."""
    return "job_" + secrets.token_urlsafe(16).replace("-", "x").replace("_", "y")


def new_traceparent() -> str:
    """A fresh W3C traceparent (sampled), for publishers that do not trace themselves."""
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


class VoicenoteClient:
    """Publishes requests and reads completions on one cluster; close it (or use ``with``) to flush."""

    def __init__(self, settings: KafkaSettings | None = None, *, bootstrap_servers: str | None = None,
                 topic_prefix: str | None = None, codecs: Codecs | None = None, models: ModelRegistry | None = None) -> None:
        settings = settings or KafkaSettings()
        updates = {k: v for k, v in {"bootstrap_servers": bootstrap_servers, "topic_prefix": topic_prefix}.items() if v is not None}
        self.settings = settings.model_copy(update=updates) if updates else settings
        catalog = self.settings.catalog()
        self.requests_topic = catalog.requests.name  # the default model's (CPU family); each request goes to its model's
        if models is None:
            from voicenote.settings import Settings

            models = ModelRegistry.from_settings(Settings(kafka=self.settings))
        self.models = models
        self.completions_topic = catalog.completions.name
        # The deployment's codec (voicenote.kafka.event_codecs): the settings' schema registry when one is set.
        self._codecs = codecs or event_codecs(self.settings)
        self._producer: Producer | None = None
        self._failures: list[str] = []
        self._published_at: dict[str, int] = {}

    @classmethod
    def from_env(cls, **overrides: Any) -> VoicenoteClient:
        """A client on the cluster the ``VOICENOTE_KAFKA__*`` environment names (as the services read it)."""
        from voicenote.settings import Settings

        return cls(Settings().kafka, **overrides)

    def __enter__(self) -> VoicenoteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, text: str, *, voice: str = "default", format: str = "wav", job_id: str | None = None,
                model: str = "tts-1", speed: float = 1.0, priority: str = "batch", webhook_url: str | None = None,
                attributes: Mapping[str, str] | None = None, trace_parent: str | None = None, **fields: Any) -> dict[str, Any]:
        """The request event ``publish`` would send, checked; raises InvalidRequest when the workers would refuse it.

        ``fields`` sets any other request field (``temperature``, ``seed``, ``use_cache``, ...). The voice
        name is resolved for the model's engine as the API does and kept in ``attributes["voice_requested"]``;
        the request goes to the model's request topic.
        """
        try:
            served = self.models.get(model)
            if is_voice_id(voice):  # a voice registered through the API (docs/voices.md): S1-mini only
                if served.engine is not EngineKind.s1mini:
                    raise InvalidRequest(f"registered voice {voice!r} needs an S1-mini model, not {served.id!r} "
                                         "(voice_model_mismatch)")
                voice_id = voice  # whether it exists is the worker's to say (a voice_not_found failure)
            else:
                voice_id = served.resolve_voice(served.default_voice if voice == "default" else voice).id
        except (UnknownModel, UnknownVoiceName) as exc:
            raise InvalidRequest(str(exc)) from None
        record: dict[str, Any] = {
            "job_id": job_id or new_job_id(), "created_at": now_ms(), "text": text, "voice": voice_id,
            "format": format, "speed": speed, "model": served.id, "priority": priority, "webhook_url": webhook_url,
            "trace_parent": trace_parent or new_traceparent(),
            "attributes": {"voice_requested": voice, "model_requested": model, **(attributes or {})}, **fields,
        }
        problems = request_problems(record)
        if problems:
            raise InvalidRequest("; ".join(problems))
        return record

    def publish(self, text: str, *, headers: Mapping[str, str | bytes] | None = None, **options: Any) -> str:
        """Queue one request and return its job id; ``flush`` (or ``close``) confirms the broker has it.

        ``options`` are those of :meth:`request`; ``headers`` are added to the Kafka record's.
        """
        record = self.request(text, **options)
        job_id, trace_parent, created_at = record["job_id"], record["trace_parent"], record["created_at"]
        topic = self.models.get(record["model"]).request_topic
        try:
            value = self._codecs.request.encode(record)
        except EncodeError as exc:
            raise InvalidRequest(str(exc)) from None
        wire_headers = [("traceparent", trace_parent.encode())]
        wire_headers += [(k, v if isinstance(v, bytes) else v.encode()) for k, v in (headers or {}).items()]
        producer = self._ensure_producer()
        try:
            producer.produce(topic, key=job_id.encode(), value=value, headers=wire_headers,
                             on_delivery=self._delivered)
        except BufferError:
            producer.poll(1.0)  # the local queue is full: serve delivery reports, then try once more
            producer.produce(topic, key=job_id.encode(), value=value, headers=wire_headers,
                             on_delivery=self._delivered)
        except KafkaException as exc:
            raise PublishError(f"{topic}: {exc}") from exc
        producer.poll(0)
        self._published_at[job_id] = created_at
        return job_id

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every published request is acknowledged; raises PublishError for any that was not."""
        if self._producer is None:
            return
        remaining = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        if remaining:
            raise PublishError(f"{remaining} requests not acknowledged within {timeout}s by {self.settings.bootstrap_servers}")
        if failures:
            raise PublishError(f"{len(failures)} requests refused by the broker: {failures[:3]}")

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then let the producer go; what is still unacknowledged is dropped and reported by the PublishError."""
        try:
            self.flush(timeout)
        finally:
            if self._producer is not None:
                self._producer.purge()  # else librdkafka keeps retrying (and logging) until the process exits
                self._producer.flush(0)
                self._producer = None

    def completions(self, *, group_id: str | None = None, since_ms: int | None = None, from_beginning: bool = False,
                    until_end: bool = False, idle_timeout: float | None = None,
                    on_undecodable: Callable[[Message, DecodeError], None] | None = None) -> Iterator[Completion]:
        """Completions as they arrive.

        With ``group_id`` the consumer group keeps the position (at-least-once: a completion's offset is
        stored only after the loop body ran for it); without one the read starts at ``since_ms``, the
        beginning, or the end. ``until_end`` stops at the end of every partition of the topic (with a group,
only when this consumer is the group's only member); ``idle_timeout`` stops
        after that many seconds without a record. An undecodable record raises DecodeError unless
        ``on_undecodable`` takes it.
        """
        conf: dict[str, Any] = {"enable.partition.eof": True,
                                "session.timeout.ms": self.settings.session_timeout_ms,
                                "heartbeat.interval.ms": self.settings.heartbeat_interval_ms}
        if group_id:
            conf.update({"enable.auto.commit": True, "enable.auto.offset.store": False,
                         "auto.offset.reset": "earliest" if from_beginning else "latest"})
        else:
            conf.update({"enable.auto.commit": False})
        consumer = new_consumer(self.settings, group_id or f"voicenote-client-{uuid.uuid4().hex[:12]}", conf)
        try:
            partitions = self._partitions(consumer)
            if group_id:
                consumer.subscribe([self.completions_topic])
            else:
                consumer.assign(self._start_positions(consumer, partitions, since_ms, from_beginning))
            at_end: set[int] = set()
            last = time.monotonic()
            while True:
                msg = consumer.poll(0.2)
                if msg is None:
                    if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                        return
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition() or 0)
                        if until_end and at_end >= set(partitions):
                            return
                        continue
                    raise DependencyUnavailable("kafka", f"reading {self.completions_topic}: {error}")
                last = time.monotonic()
                at_end.discard(msg.partition())
                try:
                    completion = Completion.from_record(self._codecs.completion.decode(msg.value()))
                except DecodeError as exc:
                    if on_undecodable is None:
                        raise
                    on_undecodable(msg, exc)
                else:
                    yield completion
                if group_id:
                    consumer.store_offsets(msg)
        except KafkaException as exc:
            raise DependencyUnavailable("kafka", f"reading {self.completions_topic}: {exc}") from exc
        finally:
            consumer.close()

    def wait(self, job_id: str, *, timeout: float = 60.0, since_ms: int | None = None) -> Completion:
        """The completion of ``job_id``; raises JobTimeout when none arrives within ``timeout`` seconds.

        Reading starts shortly before the job was published by this client, or at ``since_ms``, or at the
        beginning of the topic's retention when neither is known.
        """
        if since_ms is None and job_id in self._published_at:
            since_ms = self._published_at[job_id] - CLOCK_SLACK_MS
        deadline = time.monotonic() + timeout
        stream = self.completions(since_ms=since_ms, from_beginning=since_ms is None, idle_timeout=timeout,
                                  on_undecodable=lambda _m, _e: None)  # not ours to judge; the workers dead-letter it
        try:
            for completion in stream:
                if completion.job_id == job_id:
                    return completion
                if time.monotonic() > deadline:
                    break
        finally:
            stream.close()  # type: ignore[attr-defined]  # a generator
        raise JobTimeout(f"no completion for {job_id} on {self.completions_topic} within {timeout:g}s")

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            self._producer = new_producer(self.settings, {"enable.idempotence": True,
                                                          "delivery.timeout.ms": self.settings.delivery_timeout_ms})
        return self._producer

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{(msg.key() or b'').decode(errors='replace')}: {err.str()}")

    def _partitions(self, consumer: Consumer) -> list[int]:
        meta = consumer.list_topics(self.completions_topic, timeout=10).topics.get(self.completions_topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise DependencyUnavailable("kafka", f"topic {self.completions_topic} does not exist at {self.settings.bootstrap_servers} "
                                                 f"(create it with `voicenote topics create`)")
        return sorted(meta.partitions)

    def _start_positions(self, consumer: Consumer, partitions: list[int], since_ms: int | None,
                         from_beginning: bool) -> list[TopicPartition]:
        if since_ms is not None:
            found = consumer.offsets_for_times([TopicPartition(self.completions_topic, p, since_ms) for p in partitions], timeout=10)
            # -1: nothing at or after since_ms yet, so start at the end
            return [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else -1) for tp in found]
        start = -2 if from_beginning else -1  # OFFSET_BEGINNING / OFFSET_END
        return [TopicPartition(self.completions_topic, p, start) for p in partitions]
