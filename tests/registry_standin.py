"""A Confluent Schema Registry stand-in (the REST calls a producer and a consumer make), on loopback.

The compose file runs Karapace, which is not on PyPI; the compose boot test runs the real one where
``make karapace`` built it (tests/karapace.py) and points ``schema-registry:8081`` here only where
none is installed, as in CI. Ids are global and stable per schema text, as in the real one.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RegistryStandIn:
    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, str] = {}
        self._subjects: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                path = self.path.split("?")[0]
                if m := re.fullmatch(r"/subjects/([^/]+)/versions", path):
                    self._send(200, {"id": registry.register(m.group(1), body["schema"])})
                elif m := re.fullmatch(r"/subjects/([^/]+)", path):
                    found = registry.lookup(m.group(1), body["schema"])
                    self._send(200, found) if found else self._send(404, {"error_code": 40403, "message": "not found"})
                else:
                    self._send(404, {"error_code": 404, "message": path})

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                if (m := re.fullmatch(r"/schemas/ids/(\d+)", path)) and int(m.group(1)) in registry._schemas:
                    self._send(200, {"schema": registry._schemas[int(m.group(1))]})
                elif path == "/subjects":
                    self._send(200, list(registry._subjects))  # type: ignore[arg-type]
                else:
                    self._send(404, {"error_code": 40403, "message": path})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def register(self, subject: str, schema: str) -> int:
        key = json.dumps(json.loads(schema), sort_keys=True)
        with self._lock:
            schema_id = self._ids.setdefault(key, len(self._ids) + 1)
            self._schemas[schema_id] = schema
            versions = self._subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return schema_id

    def lookup(self, subject: str, schema: str) -> dict[str, Any] | None:
        schema_id = self._ids.get(json.dumps(json.loads(schema), sort_keys=True))
        versions = self._subjects.get(subject, [])
        if schema_id is None or schema_id not in versions:
            return None
        return {"subject": subject, "id": schema_id, "version": versions.index(schema_id) + 1, "schema": schema}

    def start(self) -> RegistryStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
