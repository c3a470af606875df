"""The wire codec, as the server writes and reads it (the server's is ``schemas/codec.py``).

Without a schema registry, records are Avro single-object encoded: ``C3 01`` + the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema + the Avro body. With one, they carry the
Confluent framing: ``00`` + the 4-byte big-endian schema id + the body, the schema registered under
the subject ``ai.voicenote.v1.<Event>``. Readers accept both. The schemas are a byte-identical copy of
the server's (``voicenote_client/avro/``, past versions under ``avro/history/`` stay readable).
"""

from __future__ import annotations

import io
import json
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, Protocol

import fastavro
import httpx
from fastavro.schema import fingerprint, to_parsing_canonical_form

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
SUBJECT_PREFIX = "ai.voicenote.v1."

SCHEMA_FILES = {
    "SynthesisRequest": "synthesis_request.avsc",
    "SynthesisResult": "synthesis_result.avsc",
    "JobCompletion": "job_completion.avsc",
    "DeadLetter": "dead_letter.avsc",
    "SpeechSegment": "speech_segment.avsc",
    "WebhookDelivery": "webhook_delivery.avsc",
}


class CodecError(ValueError):
    """A record that does not encode or decode."""


class EncodeError(CodecError):
    pass


class DecodeError(CodecError):
    """``reason``: undecodable, unknown_schema or schema_mismatch (the server's dead-letter reasons)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RegistryUnavailable(ConnectionError):
    """The schema registry did not answer (or answered an error other than 'not found')."""


@dataclass(frozen=True)
class LoadedSchema:
    name: str
    text: str
    parsed: Any
    fingerprint: bytes


def _load(text: str, origin: str) -> LoadedSchema:
    raw = json.loads(text)
    parsed = fastavro.parse_schema(raw)
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    return LoadedSchema(name=raw["name"], text=text, parsed=parsed, fingerprint=fp)


@cache
def load_schema(name: str) -> LoadedSchema:
    """The current schema of event ``name`` shipped with this package."""
    try:
        filename = SCHEMA_FILES[name]
    except KeyError:
        raise CodecError(f"unknown event type {name!r}; known: {sorted(SCHEMA_FILES)}") from None
    return _load(resources.files(__package__).joinpath("avro", filename).read_text(), filename)


@cache
def history(name: str) -> tuple[LoadedSchema, ...]:
    """The past versions of ``name`` (``avro/history/<stem>.vN.avsc``), oldest first."""
    folder = resources.files(__package__).joinpath("avro", "history")
    stem = SCHEMA_FILES[name].removesuffix(".avsc")
    return tuple(_load(e.read_text(), e.name) for e in sorted(folder.iterdir(), key=lambda e: e.name)
                 if e.name.startswith(stem + ".v") and e.name.endswith(".avsc"))


class SchemaRegistry(Protocol):
    def register(self, subject: str, schema: str) -> int: ...

    def schema_by_id(self, schema_id: int) -> str: ...


class HttpSchemaRegistry:
    """The two calls of the Confluent Schema Registry REST API the codec makes (Karapace and Redpanda serve it too).

    Basic auth may ride in the URL (``https://user:secret@registry:8081``); ids never change meaning, so
    lookups are cached.
    """

    _CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

    def __init__(self, url: str, *, timeout: float = 5.0, **client_options: Any) -> None:
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, **client_options)
        self._by_id: dict[int, str] = {}
        self._lock = threading.Lock()

    def register(self, subject: str, schema: str) -> int:
        body = self._call("POST", f"/subjects/{subject}/versions", json={"schema": schema})
        return int(body["id"])

    def schema_by_id(self, schema_id: int) -> str:
        with self._lock:
            if schema_id in self._by_id:
                return self._by_id[schema_id]
        text = str(self._call("GET", f"/schemas/ids/{schema_id}")["schema"])
        with self._lock:
            self._by_id[schema_id] = text
        return text

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, headers={"Content-Type": self._CONTENT_TYPE,
                                                                 "Accept": self._CONTENT_TYPE}, **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"schema registry {self._http.base_url}: {exc}") from exc
        if response.status_code == 404:
            raise LookupError(f"schema registry {self._http.base_url}{path}: not found")
        if response.status_code >= 400:
            raise RegistryUnavailable(f"schema registry {self._http.base_url}{path}: {response.status_code} {response.text[:200]}")
        return dict(response.json())


class AvroCodec:
    """Encodes and decodes one event type as dicts (thread-safe once the registry id is known)."""

    def __init__(self, name: str, *, registry: SchemaRegistry | None = None, subject: str | None = None) -> None:
        self.schema = load_schema(name)
        self._registry = registry
        self._subject = subject or SUBJECT_PREFIX + name
        self._writers = {s.fingerprint: s for s in (*history(name), self.schema)}
        self._by_registry_id: dict[int, Any] = {}
        self._schema_id: int | None = None

    @property
    def uses_registry(self) -> bool:
        return self._registry is not None

    def encode(self, record: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        if self._registry is not None:
            if self._schema_id is None:
                self._schema_id = self._registry.register(self._subject, self.schema.text)
                self._by_registry_id[self._schema_id] = self.schema.parsed
            buf.write(CONFLUENT_MAGIC + struct.pack(">I", self._schema_id))
        else:
            buf.write(SINGLE_OBJECT_MAGIC + self.schema.fingerprint)
        try:
            fastavro.schemaless_writer(buf, self.schema.parsed, dict(record))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise EncodeError(f"{self.schema.name} does not match its schema: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """Either framing into a dict of this package's schema version, or DecodeError."""
        if not data:
            raise DecodeError("undecodable", "empty message value")
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise DecodeError("undecodable", "truncated Avro single-object header")
            writer = self._writers.get(data[2:10])
            if writer is None:
                raise DecodeError("unknown_schema", f"Avro fingerprint {data[2:10].hex()} is not a known {self.schema.name} schema "
                                                    "(a newer server? upgrade voicenote-client, or use a schema registry)")
            return self._read(data[10:], writer.parsed)
        if data[:1] == CONFLUENT_MAGIC and len(data) >= 5:
            return self._read(data[5:], self._writer_for_id(struct.unpack(">I", data[1:5])[0]))
        raise DecodeError("undecodable", f"not an Avro event: expected single-object (c301) or Confluent (00) framing, "
                                         f"got {data[:4].hex()!r}")

    def _writer_for_id(self, schema_id: int) -> Any:
        if schema_id not in self._by_registry_id:
            if self._registry is None:
                raise DecodeError("unknown_schema", f"Confluent-framed event (schema id {schema_id}) but no schema registry is configured")
            try:
                text = self._registry.schema_by_id(schema_id)
            except LookupError as exc:
                raise DecodeError("unknown_schema", str(exc)) from exc
            self._by_registry_id[schema_id] = _load(text, f"registry id {schema_id}").parsed
        return self._by_registry_id[schema_id]

    def _read(self, body: bytes, writer: Any) -> dict[str, Any]:
        stream = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(stream, writer, self.schema.parsed)
        except (EOFError, ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError, OverflowError) as exc:
            raise DecodeError("undecodable", f"{self.schema.name} body does not decode: {exc!r}") from exc
        except fastavro.read.SchemaResolutionError as exc:
            raise DecodeError("schema_mismatch", f"cannot resolve writer schema: {exc}") from exc
        if stream.tell() != len(body):
            raise DecodeError("undecodable", f"{len(body) - stream.tell()} trailing bytes after {self.schema.name}")
        assert isinstance(record, dict)
        return {k: int(v.timestamp() * 1000) if isinstance(v, datetime) else v for k, v in record.items()}


class Codecs:
    """The client's two event types, sharing a registry (or none)."""

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.request = AvroCodec("SynthesisRequest", registry=registry)
        self.completion = AvroCodec("JobCompletion", registry=registry)
