"""HttpSchemaRegistry (confluent-kafka's client behind our protocol) over HTTP, and the codec's Confluent framing with it.

The server here speaks the two Confluent Schema Registry REST calls the codec needs (register a schema
under a subject, fetch a schema by id) with the registry's own error codes; it stands in for Confluent
Schema Registry, Karapace or Redpanda, which cannot run on this machine without a JVM or Docker.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from schemas.codec import CONFLUENT_MAGIC, AvroCodec
from schemas.errors import DecodeError, DependencyUnavailable
from schemas.events import SynthesisRequest
from schemas.registry import HttpSchemaRegistry
from voicenote.errors import VoicenoteError

USER, PASSWORD = "svc", "s3cret"


class RegistryServer:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.auth_seen: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/vnd.schemaregistry.v1+json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                header = self.headers.get("authorization", "")
                registry.auth_seen.append(header)
                if header != "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode():
                    self._answer(401, {"error_code": 401, "message": "Unauthorized"})
                    return False
                return True

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                if not self._authorized():
                    return
                match = re.fullmatch(r"/subjects/([^/?]+)/versions(\?.*)?", self.path)
                if not match:
                    self._answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
                    return
                canonical = json.dumps(json.loads(body["schema"]), sort_keys=True)
                schema_id = registry.ids.setdefault(canonical, len(registry.ids) + 1)
                registry.schemas[schema_id] = body["schema"]
                registry.subjects.setdefault(match.group(1), []).append(schema_id)
                self._answer(200, {"id": schema_id})

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorized():
                    return
                match = re.fullmatch(r"/schemas/ids/(\d+)(\?.*)?", self.path)
                if match and int(match.group(1)) in registry.schemas:
                    self._answer(200, {"schema": registry.schemas[int(match.group(1))]})
                else:
                    self._answer(404, {"error_code": 40403, "message": "Schema not found"})

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[RegistryServer]:
    s = RegistryServer()
    try:
        yield s
    finally:
        s.stop()


def test_events_written_and_read_through_the_registry_carry_its_schema_id(server: RegistryServer) -> None:
    writer_registry, reader_registry = HttpSchemaRegistry(server.url), HttpSchemaRegistry(server.url)
    try:
        event = SynthesisRequest(job_id="job_1", created_at=1_700_000_000_123, text="Hello there.")
        data = AvroCodec("SynthesisRequest", registry=writer_registry).encode_event(event)
        assert data[:1] == CONFLUENT_MAGIC
        schema_id = struct.unpack(">I", data[1:5])[0]
        assert server.subjects == {"ai.voicenote.v1.SynthesisRequest": [schema_id]}
        # A fresh reader learns the writer schema from the registry by id.
        assert AvroCodec("SynthesisRequest", registry=reader_registry).decode_event(data) == event
        assert all(h.startswith("Basic ") for h in server.auth_seen)  # credentials from the URL went along
    finally:
        writer_registry.close()
        reader_registry.close()


def test_an_id_the_registry_does_not_know_is_an_unknown_schema_dead_letter(server: RegistryServer) -> None:
    registry = HttpSchemaRegistry(server.url)
    try:
        with pytest.raises(LookupError):
            registry.schema_by_id(999)
        with pytest.raises(DecodeError) as err:
            AvroCodec("SynthesisRequest", registry=registry).decode(CONFLUENT_MAGIC + struct.pack(">I", 999) + b"\x02")
        assert err.value.reason == "unknown_schema"
    finally:
        registry.close()


def test_wrong_credentials_and_an_unreachable_registry_are_dependency_errors(server: RegistryServer) -> None:
    wrong = HttpSchemaRegistry(server.url.replace(PASSWORD, "wrong"), config={"max.retries": 0})
    down = HttpSchemaRegistry("http://127.0.0.1:9", timeout=1, config={"max.retries": 0})  # discard port: refused
    try:
        for registry in (wrong, down):
            with pytest.raises(DependencyUnavailable) as err:
                registry.register("ai.voicenote.v1.SynthesisRequest", '"string"')
            assert err.value.dependency == "schema_registry" and isinstance(err.value, VoicenoteError)
            with pytest.raises(DependencyUnavailable):
                registry.schema_by_id(1)
    finally:
        wrong.close()
        down.close()
