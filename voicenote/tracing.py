"""OpenTelemetry traces across the pipeline: one trace per job, from the API through every worker.

The API starts the trace when it publishes a request and puts its W3C ``traceparent`` on the Kafka
record (header ``traceparent``) and in the event (``trace_parent``, which the result and completion
events carry on). Each worker records its span as a child of the traceparent it received and passes
its own on in the event it writes, so the spans chain: API -> synthesis -> completion -> webhook.

Exporters: ``none`` (default: the API still writes no traceparent, nothing is recorded), ``console``
(spans as JSON lines on stdout) or ``file`` (JSON lines appended to ``tracing.file``). A collector
(OTLP) plugs in here without touching the callers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from voicenote.settings import TracingSettings

_PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"
_TRACER = "voicenote"


def configure_tracing(service: str, settings: TracingSettings) -> None:
    """Install the tracer provider for this process (once, at start-up)."""
    if settings.exporter == "none":
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    out: IO[str] = open(settings.file, "a", buffering=1) if settings.exporter == "file" and settings.file else sys.stdout
    exporter = ConsoleSpanExporter(service_name=service, out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
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
