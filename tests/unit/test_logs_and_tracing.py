"""JSON log lines carry their job ids; a job's spans chain from the API through the workers."""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import StatusCode

from stream_workers.engine.base import SynthesisInput
from voicenote.logs import JsonFormatter
from voicenote.settings import TracingSettings
from voicenote.tracing import (
    TracingConfigError,
    batch_attributes,
    batch_span,
    http_outcome,
    publish_span,
    record_span,
    resolve_exporter,
    span,
    start_span,
    tracer_provider,
)

JOB = "job_" + "a1B2c3D4e5F6g7H8i9J0kL"
OTHER = "job_" + "Z" * 22


def _line(msg: str, *args: object, **extra: object) -> dict:
    record = logging.LogRecord("voicenote.test", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return json.loads(JsonFormatter().format(record))


def test_a_line_about_one_job_carries_its_id_as_a_field() -> None:
    line = _line("webhook for %s failed (attempt %d)", JOB, 2)
    assert line["job_id"] == JOB and line["level"] == "warning" and line["msg"].startswith("webhook for job_")
    assert _line("engine failed on %s#0", JOB)["job_id"] == JOB  # a segment of the job


def test_a_line_about_several_jobs_lists_them_and_an_explicit_id_wins() -> None:
    assert _line("dropping %s and %s", JOB, OTHER)["job_ids"] == [JOB, OTHER]
    assert _line("no id in the text", job_id=JOB)["job_id"] == JOB
    assert "job_id" not in _line("consumer started")


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process; later tests only read what they record
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        pytest.skip("another tracer provider was installed first in this process")
    return exporter


def test_the_spans_of_a_job_chain_api_synthesis_completion_webhook(spans: InMemorySpanExporter) -> None:
    spans.clear()
    with publish_span(JOB) as api_parent:
        assert api_parent is not None
    synth = record_span("voicenote.synthesis", api_parent, seconds=0.2, attributes={"voicenote.job_id": JOB})
    done = record_span("voicenote.completion", synth, seconds=0.01)
    record_span("voicenote.webhook", done)
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert list(by_name) == ["voicenote.api.publish", "voicenote.synthesis", "voicenote.completion", "voicenote.webhook"]
    assert len({s.context.trace_id for s in by_name.values()}) == 1
    chain = ["voicenote.api.publish", "voicenote.synthesis", "voicenote.completion", "voicenote.webhook"]
    for parent, child in zip(chain, chain[1:], strict=False):
        assert by_name[child].parent.span_id == by_name[parent].context.span_id
    assert by_name["voicenote.synthesis"].end_time - by_name["voicenote.synthesis"].start_time == pytest.approx(2e8, rel=0.01)
    assert api_parent.split("-")[1] == format(by_name["voicenote.api.publish"].context.trace_id, "032x")


def test_a_worker_starts_no_trace_of_its_own(spans: InMemorySpanExporter) -> None:
    spans.clear()
    assert record_span("voicenote.synthesis", None) is None
    assert spans.get_finished_spans() == ()


def test_log_lines_inside_a_span_carry_its_trace_id(spans: InMemorySpanExporter) -> None:
    span = start_span("voicenote.test")
    with trace.use_span(span, end_on_exit=True):
        line = _line("inside")
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")


ENDPOINT = "http://collector.example:4318"


@pytest.mark.parametrize(("exporter", "env", "expected"), [
    (None, {}, "none"),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, "otlp"),
    (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT + "/v1/traces"}, "otlp"),
    ("file", {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, "file"),  # an explicit voicenote exporter wins
    ("none", {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, "none"),
    ("otlp", {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_SDK_DISABLED": "true"}, "none"),
    ("console", {"OTEL_SDK_DISABLED": "True"}, "none"),
])
def test_the_exporter_follows_the_settings_then_the_otel_variables(exporter: str | None, env: dict[str, str], expected: str) -> None:
    assert resolve_exporter(TracingSettings(exporter=exporter), env) == expected


def _exporter_of(provider: TracerProvider) -> object:
    processor = provider._active_span_processor._span_processors[0]  # noqa: SLF001  # what the SDK built
    assert isinstance(processor, BatchSpanProcessor)
    return processor._batch_processor._exporter  # noqa: SLF001


def test_otlp_is_configured_by_the_sdks_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=voicenote,authorization=Bearer%20t0k",
           "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25",
           "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    provider = tracer_provider("voicenote-synthesis", TracingSettings())
    assert provider is not None
    exporter = _exporter_of(provider)
    assert isinstance(exporter, OTLPSpanExporter)
    assert exporter._endpoint == ENDPOINT + "/v1/traces"  # noqa: SLF001
    assert provider.resource.attributes["service.name"] == "voicenote-synthesis"
    assert provider.resource.attributes["deployment.environment"] == "staging"
    assert isinstance(provider.sampler, ParentBasedTraceIdRatio) and "0.25" in provider.sampler.get_description()
    provider.shutdown()

    monkeypatch.setenv("OTEL_SERVICE_NAME", "tts-gpu-eu")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces.example:4318/custom")
    provider = tracer_provider("voicenote-synthesis", TracingSettings())
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "tts-gpu-eu"  # the operator's name over the role's
    assert _exporter_of(provider)._endpoint == "http://traces.example:4318/custom"  # type: ignore[attr-defined]  # noqa: SLF001
    provider.shutdown()


def test_tracing_settings_that_cannot_work_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(TracingConfigError, match="http/json"):
        tracer_provider("voicenote-api", TracingSettings(exporter="otlp"))
    with pytest.raises(TracingConfigError, match="VOICENOTE_TRACING__FILE"):
        tracer_provider("voicenote-api", TracingSettings(exporter="file"))
    with pytest.raises(ValueError, match="exporter"):
        TracingSettings(exporter="jaeger")
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is None:  # the optional extra, absent
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        with pytest.raises(TracingConfigError, match=r"voicenote\[otlp-grpc\]"):
            tracer_provider("voicenote-api", TracingSettings(exporter="otlp"))
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracer_provider("voicenote-api", TracingSettings(exporter="otlp")) is None


def test_work_spans_are_children_of_the_job_and_a_batch_links_every_job(spans: InMemorySpanExporter) -> None:
    spans.clear()
    with publish_span(JOB) as first:
        pass
    with publish_span(OTHER) as second:  # another job, another trace
        pass
    segments = [SynthesisInput(f"{JOB}#0", "a", trace_parent=first), SynthesisInput(f"{OTHER}#0", "b", trace_parent=second),
                SynthesisInput(f"{JOB}#1", "c", trace_parent=first)]
    with batch_span("voicenote.engine.batch", segments, engine="null") as batch:
        assert trace.get_current_span() is batch
    with span("voicenote.redis.complete", first, batch_attributes([JOB])):
        pass
    with span("voicenote.nothing", [None, None]) as untraced:  # no job's trace: no span
        assert not untraced.is_recording()
    by_name = {s.name: s for s in spans.get_finished_spans()}
    api_spans = [s for s in spans.get_finished_spans() if s.name == "voicenote.api.publish"]
    assert [s.attributes["voicenote.job_id"] for s in api_spans] == [JOB, OTHER]
    assert api_spans[0].context.trace_id != api_spans[1].context.trace_id
    done = by_name["voicenote.engine.batch"]
    assert done.parent.span_id == api_spans[0].context.span_id and done.context.trace_id == api_spans[0].context.trace_id
    assert [link.context.span_id for link in done.links] == [s.context.span_id for s in api_spans]
    assert done.attributes["voicenote.job_ids"] == (JOB, OTHER) and done.attributes["voicenote.batch_size"] == 2
    assert done.attributes["voicenote.engine"] == "null" and "voicenote.job_id" not in done.attributes
    redis = by_name["voicenote.redis.complete"]
    assert redis.parent.span_id == api_spans[0].context.span_id and not redis.links
    assert redis.attributes["voicenote.job_id"] == JOB
    assert "voicenote.nothing" not in by_name


def test_an_exception_or_a_failed_http_call_marks_the_span(spans: InMemorySpanExporter) -> None:
    spans.clear()
    with publish_span(JOB) as parent:
        pass
    with pytest.raises(ConnectionError), span("voicenote.storage.upload", parent):
        raise ConnectionError("S3 refused the connection")
    with span("voicenote.webhook", parent) as attempt:
        http_outcome(attempt, 500, False, "HTTP 500")
    with span("voicenote.webhook", parent) as attempt:
        http_outcome(attempt, 204, True, "HTTP 204")
    with span("voicenote.webhook", parent) as attempt:
        http_outcome(attempt, None, False, "connect error: connection refused")
    upload, failed, delivered, unreachable = [s for s in spans.get_finished_spans() if s.name != "voicenote.api.publish"]
    assert upload.status.status_code == StatusCode.ERROR and "S3 refused" in (upload.status.description or "")
    assert [e.name for e in upload.events] == ["exception"]
    assert upload.events[0].attributes["exception.type"] == "ConnectionError"
    assert failed.status.status_code == StatusCode.ERROR and failed.attributes["http.response.status_code"] == 500
    assert failed.attributes["error.type"] == "500"
    assert delivered.status.status_code == StatusCode.UNSET and delivered.attributes["http.response.status_code"] == 204
    assert unreachable.status.status_code == StatusCode.ERROR and unreachable.attributes["error.type"] == "connect error"
    assert "http.response.status_code" not in unreachable.attributes
