"""One job traced to a collector over OTLP/HTTP: the spans of the API and every worker form one tree.

The receiver here is a small HTTP server that decodes what the processes send (``ExportTraceServiceRequest``
protobufs, the OTLP wire format, decoded with the opentelemetry-proto package): the processes are configured only
by the SDK's own ``OTEL_*`` variables, as a deployment pointing at a collector would be. The job's webhook
endpoint answers 500 once, so its first attempt's span carries the error and the retry's the success.

``VOICENOTE_TRACE_TREE`` names a file to write the job's tree to (docs/trace-one-job.txt was made so).
"""

from __future__ import annotations

import base64
import gzip
import os
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.stack import Stack
from voicenote.settings import WebhookSettings

pytestmark = pytest.mark.e2e

SECRET = "whsec_" + base64.b64encode(b"e2e-otlp-secret-0123456789abcd").decode()
KINDS = {v: k.removeprefix("SPAN_KIND_").lower() for k, v in Span.SpanKind.items()}
STATUSES = {v: k.removeprefix("STATUS_CODE_").lower() for k, v in Status.StatusCode.items()}
TREE_HEADER = ("# One job's spans as an OTLP/HTTP collector received them (tests/e2e/test_otlp_tracing.py, VOICENOTE_TRACE_TREE set):\n"
               "# name  [service.name] kind STATUS duration attributes; children indented under their parent.\n")
# Shown in the printed tree, where a span has them.
SHOWN = ("voicenote.job_id", "voicenote.batch_size", "voicenote.attempt", "voicenote.status", "http.response.status_code",
         "error.type", "voicenote.engine", "http.route")


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@dataclass
class Received:
    """One span as the collector got it."""

    name: str
    service: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: str
    status: str
    status_message: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[str]
    resource: dict[str, Any]


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver (POST /v1/traces, protobuf), keeping every span and request header it gets."""

    spans: list[Received] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def receive(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    received = Received(
                        name=s.name, service=str(resource.get("service.name")), trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex() or None, kind=KINDS[s.kind], status=STATUSES[s.status.code],
                        status_message=s.status.message, start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano,
                        attributes={kv.key: _value(kv.value) for kv in s.attributes}, events=[e.name for e in s.events],
                        resource=resource)
                    with self.lock:
                        self.spans.append(received)

    def trace_of(self, job_id: str) -> list[Received]:
        with self.lock:
            ids = {s.trace_id for s in self.spans if s.attributes.get("voicenote.job_id") == job_id}
            return sorted((s for s in self.spans if s.trace_id in ids), key=lambda s: s.start_ns)


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    got = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            encoding = (self.headers.get("content-encoding") or "").lower()
            body = gzip.decompress(body) if encoding == "gzip" else zlib.decompress(body) if encoding == "deflate" else body
            if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                self.send_response(404)
                self.end_headers()
                return
            got.headers.append({k.lower(): v for k, v in self.headers.items()})
            got.receive(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield got, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def flaky_webhook() -> Iterator[tuple[list[int], str]]:
    """A webhook endpoint that answers 500 to the first delivery and 204 after."""
    answers: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            answers.append(500 if not answers else 204)
            self.send_response(answers[-1])
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield answers, f"http://127.0.0.1:{server.server_address[1]}/hooks"
    finally:
        server.shutdown()


def tree_text(spans: list[Received]) -> str:
    """The trace as an indented tree: name, service, kind, status, the attributes that tell the step apart, duration."""
    children: dict[str | None, list[Received]] = {}
    for s in spans:
        children.setdefault(s.parent_id, []).append(s)
    lines = [TREE_HEADER.rstrip("\n"), f"trace {spans[0].trace_id}"]

    def walk(parent: str | None, depth: int) -> None:
        for s in children.get(parent, []):
            shown = " ".join(f"{k}={s.attributes[k]}" for k in SHOWN if k in s.attributes)
            status = s.status.upper() + (f" ({s.status_message})" if s.status_message else "")
            events = f" events={s.events}" if s.events else ""
            lines.append(f"{'  ' * depth}{s.name}  [{s.service}] {s.kind} {status} {(s.end_ns - s.start_ns) / 1e6:.1f}ms"
                         f"{' ' + shown if shown else ''}{events}")
            walk(s.span_id, depth + 1)

    walk(None, 1)
    return "\n".join(lines) + "\n"


def test_one_job_reaches_an_otlp_collector_as_one_tree(stack: Stack, collector: tuple[Collector, str],
                                                       flaky_webhook: tuple[list[int], str]) -> None:
    got, endpoint = collector
    answers, hook_url = flaky_webhook
    # Nothing voicenote-specific: an OTLP endpoint alone turns the exporter on.
    stack.extra_env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_HEADERS": "x-voicenote-test=otlp-e2e",
                            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=e2e", "OTEL_BSP_SCHEDULE_DELAY": "200"})
    stack.settings.webhooks = WebhookSettings(signing_secret=SECRET, allow_hosts=["127.0.0.1"],  # type: ignore[arg-type]
                                              retry_schedule_seconds=[0.5], jitter=0)
    for role in ("synthesis", "completion", "webhooks"):
        stack.start_worker(role)
    stack.start_api()
    resp = httpx.post(f"{stack.base_url}/v1/audio/speech/async", timeout=10, json={
        "input": "Traced all the way to the collector.", "response_format": "wav", "webhook_url": hook_url})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    assert stack.wait_job(job_id)["status"] == "succeeded"

    wanted = {"voicenote.api.publish", "voicenote.engine.batch", "voicenote.synthesis", "voicenote.storage.upload",
              "voicenote.completion", "voicenote.redis.complete", "voicenote.webhook"}
    deadline = time.monotonic() + 60  # the retry is due half a second after the 500; the exporters send every 200ms
    spans: list[Received] = []
    while time.monotonic() < deadline:
        stack.check_alive()
        spans = got.trace_of(job_id)
        if wanted <= {s.name for s in spans} and sum(s.name == "voicenote.webhook" for s in spans) == 2:
            break
        time.sleep(0.2)
    assert wanted <= {s.name for s in spans}, sorted(s.name for s in spans)
    assert answers == [500, 204]

    # One trace, rooted at the API's HTTP server span; every other span's parent is in it.
    assert len({s.trace_id for s in spans}) == 1
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if s.parent_id is None]
    assert len(roots) == 1 and roots[0].kind == "server" and roots[0].service == "voicenote-api", tree_text(spans)
    assert all(s.parent_id in by_id for s in spans if s is not roots[0]), tree_text(spans)

    def chain(s: Received) -> list[str]:
        names = []
        while s.parent_id is not None:
            s = by_id[s.parent_id]
            names.append(s.name)
        return names

    named = {s.name: s for s in spans}
    assert chain(named["voicenote.api.publish"])[-1] == roots[0].name
    assert "voicenote.api.publish" in chain(named["voicenote.engine.batch"])
    assert chain(named["voicenote.synthesis"])[0] == "voicenote.api.publish"
    assert chain(named["voicenote.storage.upload"])[0] == "voicenote.synthesis"
    assert chain(named["voicenote.completion"])[0] == "voicenote.synthesis"
    assert chain(named["voicenote.redis.complete"])[0] == "voicenote.completion"
    services = {name: named[name].service for name in wanted}
    assert services == {"voicenote.api.publish": "voicenote-api", "voicenote.engine.batch": "voicenote-synthesis",
                        "voicenote.synthesis": "voicenote-synthesis", "voicenote.storage.upload": "voicenote-completion",
                        "voicenote.completion": "voicenote-completion", "voicenote.redis.complete": "voicenote-completion",
                        "voicenote.webhook": "voicenote-webhooks"}
    assert named["voicenote.engine.batch"].attributes["voicenote.batch_size"] == 1
    # The work spans are recorded as the work happens: the engine batch ends before the synthesis result is out.
    assert named["voicenote.engine.batch"].end_ns <= named["voicenote.synthesis"].end_ns

    # Each webhook attempt is its own span, child of the completion: the 500 is an error, the retry's 204 is not.
    attempts = sorted((s for s in spans if s.name == "voicenote.webhook"), key=lambda s: s.attributes["voicenote.attempt"])
    assert [chain(s)[0] for s in attempts] == ["voicenote.completion"] * 2
    assert [(s.attributes["voicenote.attempt"], s.attributes["http.response.status_code"], s.status) for s in attempts] == [
        (1, 500, "error"), (2, 204, "unset")]
    assert attempts[0].kind == "client" and attempts[0].attributes["error.type"] == "500"

    # The SDK's own variables reached every process: the headers on the export, the resource attributes.
    assert got.headers and all(h.get("x-voicenote-test") == "otlp-e2e" for h in got.headers)
    assert {s.resource.get("deployment.environment") for s in spans} == {"e2e"}
    if os.environ.get("VOICENOTE_TRACE_TREE"):
        Path(os.environ["VOICENOTE_TRACE_TREE"]).write_text(tree_text(spans))
