"""Schema registry clients for the Confluent wire format.

``HttpSchemaRegistry`` is confluent-kafka's ``SchemaRegistryClient`` (the Confluent Schema Registry REST
API, also served by Karapace and Redpanda; basic auth in the URL or in ``config``, TLS, retries, caching)
behind our two-method :class:`SchemaRegistry` protocol; the framing stays in ``schemas.codec``, which
also reads the registry-less single-object encoding. ``InMemorySchemaRegistry`` keeps ids in a dict; it
stands in for a registry in unit tests of the framing only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError

from schemas.errors import DependencyUnavailable

try:  # the HTTP library confluent-kafka's client runs on: httpx2 where installed, else httpx
    import httpx2 as _http  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on what the extra pulled in
    import httpx as _http  # type: ignore[no-redef]

# The registry's "not found" error codes (subject, version, schema): a caller error, not an outage.
_NOT_FOUND = {40401, 40402, 40403}


class SchemaRegistry(Protocol):
    def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` under ``subject`` (idempotent) and return its global id."""
        ...

    def schema_by_id(self, schema_id: int) -> str:
        """The schema text stored under ``schema_id``."""
        ...


class InMemorySchemaRegistry:
    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, str] = {}
        self._lock = threading.Lock()

    def register(self, subject: str, schema: str) -> int:
        canonical = json.dumps(json.loads(schema), sort_keys=True)
        with self._lock:
            if canonical not in self._ids:
                new_id = len(self._ids) + 1
                self._ids[canonical] = new_id
                self._schemas[new_id] = schema
            return self._ids[canonical]

    def schema_by_id(self, schema_id: int) -> str:
        try:
            return self._schemas[schema_id]
        except KeyError:
            raise LookupError(f"schema id {schema_id} is not registered") from None


class HttpSchemaRegistry:
    """A Confluent-compatible registry through confluent-kafka's client (ids never change meaning, so it caches)."""

    def __init__(self, url: str, *, timeout: float = 5.0, config: Mapping[str, Any] | None = None) -> None:
        """``config`` takes the client's other keys: ``basic.auth.user.info``, ``ssl.ca.location``, ``max.retries``..."""
        self._client = SchemaRegistryClient({"url": url, "timeout": timeout, **(config or {})})

    def register(self, subject: str, schema: str) -> int:
        try:
            return int(self._client.register_schema(subject, Schema(schema, "AVRO")))
        except (SchemaRegistryError, _http.HTTPError, OSError) as exc:
            raise DependencyUnavailable("schema_registry", f"cannot register {subject}: {exc}") from exc

    def schema_by_id(self, schema_id: int) -> str:
        try:
            found = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 or exc.error_code in _NOT_FOUND:
                raise LookupError(f"schema id {schema_id} is not registered") from exc
            raise DependencyUnavailable("schema_registry", f"cannot fetch schema {schema_id}: {exc}") from exc
        except (_http.HTTPError, OSError) as exc:
            raise DependencyUnavailable("schema_registry", f"cannot fetch schema {schema_id}: {exc}") from exc
        return str(found.schema_str)

    def close(self) -> None:
        self._client.close()
