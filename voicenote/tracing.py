"""OpenTelemetry traces across the pipeline: one trace per job, from the API through every worker.

The API starts the trace when it publishes a request and puts its W3C ``traceparent`` on the Kafka
record (header ``traceparent``) and in the event (``trace_parent``, which the result and completion
events carry on). Each worker records its span as a child of the traceparent it received and passes
its own on in the event it writes, so the spans chain: API -> synthesis -> completion -> webhook.
Around the work itself, :func:`span` opens child spans as it happens: the engine batch, the storage
uploads, the Redis writes of completion and each webhook attempt (exceptions recorded, status ERROR).

Exporters (``tracing.exporter``): ``none`` (nothing is recorded, the API writes no traceparent),
``console`` (spans as JSON lines on stdout), ``file`` (JSON lines appended to ``tracing.file``) or
``otlp`` (to a collector; OTLP/HTTP protobuf, or gRPC with the ``otlp-grpc`` extra). Left unset, it is
``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, else
``none``. The SDK's own variables apply: the OTLP endpoint, headers, protocol and timeout,
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (over the role's default name),
``OTEL_TRACES_SAMPLER(_ARG)``, ``OTEL_BSP_*``, and ``OTEL_SDK_DISABLED=true`` (no spans at all).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import IO, TYPE_CHECKING, Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from voicenote.errors import ConfigError

if TYPE_CHECKING:  # settings bring pydantic: the engine (GPU image, no pydantic) imports this module for its spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from voicenote.settings import TracingSettings

_PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"
_TRACER = "voicenote"
_FLUSH_MILLIS = 500  # how often spans leave the process, unless OTEL_BSP_SCHEDULE_DELAY says otherwise
EXPORTERS = ("none", "console", "file", "otlp")


class TracingConfigError(ConfigError, ValueError):
    """Tracing settings or OTEL_* variables that cannot work (named in the message)."""


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def resolve_exporter(settings: TracingSettings, environ: Mapping[str, str] | None = None) -> str:
    """The exporter this process uses: OTEL_SDK_DISABLED wins, then ``tracing.exporter``, then an OTLP endpoint."""
    env = os.environ if environ is None else environ
    if _true(env.get("OTEL_SDK_DISABLED")):
        return "none"
    if settings.exporter:
        return settings.exporter
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return "none"


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, headers, timeout, compression, certificates: the OTEL_* variables
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError as exc:
            raise TracingConfigError("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter: install voicenote[otlp-grpc] "
                                     "(opentelemetry-exporter-otlp-proto-grpc), or use http/protobuf") from exc
        return GrpcSpanExporter()  # type: ignore[no-any-return]
    raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use http/protobuf or grpc")


def tracer_provider(service: str, settings: TracingSettings, environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """The tracer provider ``settings`` and the OTEL_* variables describe (None: tracing off); not installed."""
    env = os.environ if environ is None else environ
    exporter_name = resolve_exporter(settings, env)
    if exporter_name == "none":
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    exporter: SpanExporter
    if exporter_name == "otlp":
        exporter = _otlp_exporter(env)
    else:
        if exporter_name == "file" and not settings.file:
            raise TracingConfigError("tracing.exporter=file needs tracing.file (VOICENOTE_TRACING__FILE): the file spans are appended to")
        out: IO[str] = open(settings.file, "a", buffering=1) if exporter_name == "file" and settings.file else sys.stdout
        exporter = ConsoleSpanExporter(service_name=service, out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (read by Resource.create) name the service if they say so.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "unknown_service")).startswith("unknown_service"):
        resource = Resource.create({SERVICE_NAME: service})
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER(_ARG), parent-based always-on by default
    delay = None if env.get("OTEL_BSP_SCHEDULE_DELAY") else _FLUSH_MILLIS
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay))
    return provider


def configure_tracing(service: str, settings: TracingSettings) -> None:
    """Install the tracer provider for this process (once, at start-up)."""
    provider = tracer_provider(service, settings)
    if provider is not None:
        trace.set_tracer_provider(provider)


def parent_context(traceparent: str | None) -> Context | None:
    return _PROPAGATOR.extract({TRACEPARENT: traceparent}) if traceparent else None


def traceparent_of(span: trace.Span) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(TRACEPARENT)


def start_span(name: str, traceparent: str | None = None, *, kind: SpanKind = SpanKind.INTERNAL,
               attributes: Mapping[str, Any] | None = None, started_ns: int | None = None) -> trace.Span:
    """A span continuing ``traceparent`` (a new trace when None); the caller ends it."""
    return trace.get_tracer(_TRACER).start_span(name, context=parent_context(traceparent), kind=kind,
                                                attributes=dict(attributes or {}), start_time=started_ns)


def record_span(name: str, traceparent: str | None, *, seconds: float = 0.0, kind: SpanKind = SpanKind.CONSUMER,
                attributes: Mapping[str, Any] | None = None) -> str | None:
    """A finished span of ``seconds`` ending now, child of ``traceparent``; its traceparent, to pass on.

    Without a traceparent (a direct publisher that sent none, or tracing off at the API) nothing is
    recorded and None goes on: a worker never starts traces of its own.
    """
    if not traceparent:
        return None
    now = time.time_ns()
    span = start_span(name, traceparent, kind=kind, attributes=attributes, started_ns=now - int(seconds * 1e9))
    span.end(end_time=now)
    return traceparent_of(span) or traceparent


@contextmanager
def publish_span(job_id: str) -> Iterator[str | None]:
    """The API's span around publishing a job's request; yields the traceparent to send (None: tracing off)."""
    span = start_span("voicenote.api.publish", kind=SpanKind.PRODUCER, attributes={"voicenote.job_id": job_id})
    with trace.use_span(span, end_on_exit=True):
        yield traceparent_of(span) if span.get_span_context().is_valid else None


def _span_context(traceparent: str) -> trace.SpanContext:
    return trace.get_current_span(_PROPAGATOR.extract({TRACEPARENT: traceparent})).get_span_context()


@contextmanager
def span(name: str, parents: str | Iterable[str | None] | None, attributes: Mapping[str, Any] | None = None, *,
         kind: SpanKind = SpanKind.INTERNAL) -> Iterator[trace.Span]:
    """A span around work as it happens, child of the job's ``traceparent``; an exception is recorded on it
    (status ERROR) and raised on.

    ``parents`` may name several jobs' traceparents (one engine batch, one upload or Redis call for a group):
    the span is then one span, child of the first job's trace and linked to every job's span, so each job's
    trace can find it. Without any traceparent the work runs untraced (a worker never starts traces of its own).
    """
    wanted = [parents] if parents is None or isinstance(parents, str) else list(parents)
    contexts: list[trace.SpanContext] = []
    for traceparent in wanted:
        if traceparent:
            context = _span_context(traceparent)
            if context.is_valid and context not in contexts:
                contexts.append(context)
    if not contexts:
        yield trace.INVALID_SPAN
        return
    links = [Link(c, {"voicenote.link": "job"}) for c in contexts] if len(contexts) > 1 else None
    started = trace.get_tracer(_TRACER).start_span(
        name, context=trace.set_span_in_context(trace.NonRecordingSpan(contexts[0])), kind=kind,
        attributes=dict(attributes or {}), links=links)
    with trace.use_span(started, end_on_exit=True, record_exception=True, set_status_on_exception=True):
        yield started


def http_outcome(current: trace.Span, status_code: int | None, ok: bool, summary: str) -> None:
    """Put an HTTP call's outcome on its span: the response status, and status ERROR when it failed."""
    if status_code is not None:
        current.set_attribute("http.response.status_code", status_code)
    if not ok:
        current.set_attribute("error.type", str(status_code) if status_code is not None else summary.split(":")[0][:64])
        current.set_status(Status(StatusCode.ERROR, summary))


def batch_attributes(job_ids: Iterable[str], **extra: str | int) -> dict[str, Any]:
    """The attributes of a span over a group of jobs: their ids (``voicenote.job_id`` when it is one), the count,
    and ``extra`` as ``voicenote.<name>``."""
    ids = list(dict.fromkeys(job_ids))
    attributes: dict[str, Any] = {"voicenote.job_ids": ids, "voicenote.batch_size": len(ids),
                                  **{f"voicenote.{name}": value for name, value in extra.items()}}
    if len(ids) == 1:
        attributes["voicenote.job_id"] = ids[0]
    return attributes


class _Traced(Protocol):
    @property
    def job_id(self) -> str: ...
    @property
    def trace_parent(self) -> str | None: ...


def batch_span(name: str, items: Sequence[_Traced], **extra: str | int) -> AbstractContextManager[trace.Span]:
    """:func:`span` over a batch of items (engine inputs, whose ``job_id`` may name a segment ``job#n``): one span,
    child of the first item's trace and linked to every job's, with their ids and count."""
    return span(name, [item.trace_parent for item in items],
                batch_attributes([item.job_id.split("#", 1)[0] for item in items], **extra))
