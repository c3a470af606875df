"""Schema registry clients for the Confluent wire format.

``HttpSchemaRegistry`` speaks the Confluent Schema Registry REST API (also served by Karapace and
Redpanda). ``InMemorySchemaRegistry`` keeps ids in a dict; it stands in for a registry in unit tests of
the framing only.
"""

from __future__ import annotations

import json
import threading
from typing import Protocol

import httpx

from schemas.errors import DependencyUnavailable


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
    """Confluent Schema Registry REST client with a local cache (ids never change meaning)."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self._url = url.rstrip("/")
        self._client = httpx.Client(timeout=timeout)
        self._by_id: dict[int, str] = {}
        self._by_subject: dict[tuple[str, str], int] = {}

    def register(self, subject: str, schema: str) -> int:
        cached = self._by_subject.get((subject, schema))
        if cached is not None:
            return cached
        try:
            resp = self._client.post(
                f"{self._url}/subjects/{subject}/versions",
                json={"schema": schema, "schemaType": "AVRO"},
                headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            )
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise DependencyUnavailable("schema_registry", f"cannot register {subject}: {exc}") from exc
        schema_id = int(resp.json()["id"])
        self._by_subject[(subject, schema)] = schema_id
        self._by_id[schema_id] = schema
        return schema_id

    def schema_by_id(self, schema_id: int) -> str:
        if schema_id in self._by_id:
            return self._by_id[schema_id]
        try:
            resp = self._client.get(f"{self._url}/schemas/ids/{schema_id}")
        except httpx.HTTPError as exc:
            raise DependencyUnavailable("schema_registry", f"cannot fetch schema {schema_id}: {exc}") from exc
        if resp.status_code == 404:
            raise LookupError(f"schema id {schema_id} is not registered")
        resp.raise_for_status()
        schema = str(resp.json()["schema"])
        self._by_id[schema_id] = schema
        return schema
