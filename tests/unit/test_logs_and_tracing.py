"""JSON log lines carry their job ids; a job's spans chain from the API through the workers."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from voicenote.logs import JsonFormatter
from voicenote.tracing import publish_span, record_span, start_span

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
