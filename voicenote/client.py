"""A Kafka client for direct publishers and completion consumers (no HTTP API in between).

``VoicenoteClient.publish`` writes a ``SynthesisRequest`` to the request topic the way the API does
(Avro via the schemas codec, key = job_id, idempotent producer, traceparent header), ``completions``
reads ``voicenote.completions.v1`` as :class:`Completion` objects, and ``wait`` returns one job's
completion. docs/client.md has runnable examples.

This is the standalone ``voicenote-client`` (clients/python, ``voicenote_client``) set up from the server's
settings: the producing, consuming and waiting are ``voicenote_client.VoicenoteClient``'s; what this module
adds is the deployment's side of it. The librdkafka config comes from ``voicenote.kafka.client_config``
(SASL/TLS included), the codec from ``voicenote.kafka.event_codecs`` (the settings' schema registry), the
model table and voice names from ``voicenote.models.ModelRegistry`` (the deployment's, not the stock one),
and the errors are the server's tree (:class:`InvalidRequest` and :class:`JobTimeout` are also the
standalone client's; a refused publish is ``voicenote.errors.PublishError``, an unreadable cluster
``DependencyUnavailable``). It is the only module of the server that imports ``voicenote_client``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import voicenote_client
from voicenote_client import Completion, new_job_id
from voicenote_client.client import CLOCK_SLACK_MS, TERMINAL, new_traceparent

from schemas.codec import Codecs
from schemas.errors import DecodeError, EncodeError
from voicenote.errors import DependencyUnavailable, PublishError, VoicenoteError
from voicenote.kafka import client_config, event_codecs
from voicenote.models import ModelRegistry, UnknownModel, UnknownVoiceName
from voicenote.registered_voices import is_voice_id
from voicenote.settings import EngineKind, KafkaSettings

__all__ = ["CLOCK_SLACK_MS", "TERMINAL", "Completion", "InvalidRequest", "JobTimeout", "VoicenoteClient", "new_job_id",
           "new_traceparent"]


class InvalidRequest(VoicenoteError, voicenote_client.InvalidRequest):
    """The request would be refused by the workers; nothing was published."""


class JobTimeout(VoicenoteError, voicenote_client.JobTimeout):
    """No completion for the job arrived in time (it may still come)."""


class ModelRouter:
    """The deployment's model registry as the standalone client's router (``voicenote_client.Router``)."""

    def __init__(self, models: ModelRegistry) -> None:
        self.models = models

    def resolve(self, model: str, voice: str) -> tuple[str, str]:
        """The model id and voice id, resolved as the API does; ValueError names an unknown model or voice."""
        try:
            served = self.models.get(model)
            if is_voice_id(voice):  # a voice registered through the API (docs/voices.md): S1-mini only
                if served.engine is not EngineKind.s1mini:
                    raise ValueError(f"registered voice {voice!r} needs an S1-mini model, not {served.id!r} "
                                     "(voice_model_mismatch)")
                return served.id, voice  # whether it exists is the worker's to say (a voice_not_found failure)
            return served.id, served.resolve_voice(served.default_voice if voice == "default" else voice).id
        except (UnknownModel, UnknownVoiceName) as exc:
            raise ValueError(str(exc)) from None

    def topic(self, model_id: str) -> str:
        return self.models.get(model_id).request_topic


@contextmanager
def _server_errors(bootstrap_servers: str) -> Iterator[None]:
    """The standalone client's errors as the server's tree."""
    try:
        yield
    except (InvalidRequest, JobTimeout):
        raise
    except voicenote_client.InvalidRequest as exc:
        raise InvalidRequest(str(exc)) from None
    except voicenote_client.JobTimeout as exc:
        raise JobTimeout(str(exc)) from None
    except voicenote_client.PublishError as exc:
        raise PublishError(str(exc)) from exc
    except voicenote_client.BrokerUnavailable as exc:
        raise DependencyUnavailable("kafka", f"{exc} (bootstrap servers {bootstrap_servers}; create the topics with "
                                             f"`voicenote topics create`)") from exc


class VoicenoteClient(voicenote_client.VoicenoteClient):
    """Publishes requests and reads completions on one cluster; close it (or use ``with``) to flush.

    Everything of :class:`voicenote_client.VoicenoteClient` (``submit`` with ``on_delivery``, ``poll``,
    ``request``, ``completions``, ``wait``), built from ``KafkaSettings``; ``publish`` is ``submit``.
    """

    def __init__(self, settings: KafkaSettings | None = None, *, bootstrap_servers: str | None = None,
                 topic_prefix: str | None = None, codecs: Codecs | None = None, models: ModelRegistry | None = None) -> None:
        settings = settings or KafkaSettings()
        updates = {k: v for k, v in {"bootstrap_servers": bootstrap_servers, "topic_prefix": topic_prefix}.items() if v is not None}
        self.settings = settings.model_copy(update=updates) if updates else settings
        if models is None:
            from voicenote.settings import Settings

            models = ModelRegistry.from_settings(Settings(kafka=self.settings))
        self.models = models
        catalog = self.settings.catalog()
        super().__init__(
            client_config(self.settings), topic_prefix=self.settings.topic_prefix,
            producer_config={"enable.idempotence": True, "delivery.timeout.ms": self.settings.delivery_timeout_ms},
            consumer_config={"session.timeout.ms": self.settings.session_timeout_ms,
                             "heartbeat.interval.ms": self.settings.heartbeat_interval_ms},
            # The deployment's codec (voicenote.kafka.event_codecs): the settings' schema registry when one is set.
            codecs=codecs or event_codecs(self.settings), router=ModelRouter(models),
            encode_errors=(EncodeError,), decode_errors=(DecodeError,))
        self.requests_topic = catalog.requests.name  # the default model's (CPU family); each request goes to its model's
        self.completions_topic = catalog.completions.name

    @classmethod
    def from_env(cls, **overrides: Any) -> VoicenoteClient:
        """A client on the cluster the ``VOICENOTE_KAFKA__*`` environment names (as the services read it)."""
        from voicenote.settings import Settings

        return cls(Settings().kafka, **overrides)

    def __enter__(self) -> VoicenoteClient:
        return self

    def request(self, text: str, **options: Any) -> dict[str, Any]:
        """The request event ``publish`` would send, checked; raises InvalidRequest when the workers would refuse it.

        The options are those of :meth:`voicenote_client.VoicenoteClient.request`; the voice name is resolved
        by the deployment's model registry, as the API does.
        """
        with _server_errors(self.settings.bootstrap_servers):
            return super().request(text, **options)

    def encode(self, record: Any) -> bytes:
        with _server_errors(self.settings.bootstrap_servers):
            return super().encode(record)

    def submit(self, text: str, **options: Any) -> str:
        """Queue one request and return its job id; ``flush`` (or ``close``) confirms the broker has it.

        ``options`` are those of :meth:`voicenote_client.VoicenoteClient.submit` (``on_delivery``, ``headers``,
        and the request's fields).
        """
        with _server_errors(self.settings.bootstrap_servers):
            return super().submit(text, **options)

    publish = submit

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every published request is acknowledged; raises PublishError for any that was not."""
        with _server_errors(self.settings.bootstrap_servers):
            super().flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then let the producer go; what is still unacknowledged is dropped and reported by the PublishError."""
        with _server_errors(self.settings.bootstrap_servers):
            super().close(timeout)

    def completions(self, **options: Any) -> Iterator[Completion]:
        """Completions as they arrive (the options of :meth:`voicenote_client.VoicenoteClient.completions`).

        An undecodable record raises ``schemas.errors.DecodeError`` unless ``on_undecodable`` takes it; a
        cluster that cannot be read, ``DependencyUnavailable``.
        """
        stream = super().completions(**options)
        try:
            while True:
                with _server_errors(self.settings.bootstrap_servers):
                    try:
                        completion = next(stream)
                    except StopIteration:
                        return
                yield completion
        finally:
            stream.close()  # type: ignore[attr-defined]  # a generator

    def wait(self, job_id: str, *, timeout: float = 60.0, since_ms: int | None = None) -> Completion:
        """The completion of ``job_id``; raises JobTimeout when none arrives within ``timeout`` seconds."""
        with _server_errors(self.settings.bootstrap_servers):
            return super().wait(job_id, timeout=timeout, since_ms=since_ms)
