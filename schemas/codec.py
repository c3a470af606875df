"""The wire codec: Avro single-object encoding without a registry, Confluent framing with one.

Writers use single-object encoding (``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint + body)
when no registry is configured, and the Confluent framing (``00`` + 4-byte big-endian schema id +
body) when one is. Readers accept both and raise :class:`DecodeError` for anything else, which the
consumers turn into a dead letter.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, Generic, Literal, overload

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas.errors import DecodeError, EncodeError, SchemaError
from schemas.events import (
    EVENT_TYPES,
    DeadLetter,
    E,
    JobCompletion,
    SpeechSegment,
    SynthesisRequest,
    SynthesisResult,
    WebhookDelivery,
)
from schemas.registry import SchemaRegistry

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"

# Event name -> schema file shipped in schemas/avro/. Past versions live in schemas/avro/history/ and
# stay readable (writer schema resolution), which is what makes evolution backward compatible.
SCHEMA_FILES = {
    "SynthesisRequest": "synthesis_request.avsc",
    "SynthesisResult": "synthesis_result.avsc",
    "JobCompletion": "job_completion.avsc",
    "DeadLetter": "dead_letter.avsc",
    "SpeechSegment": "speech_segment.avsc",
    "WebhookDelivery": "webhook_delivery.avsc",
}


@dataclass(frozen=True)
class LoadedSchema:
    name: str
    text: str
    parsed: Any
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO of the parsing canonical form


def _load(text: str, origin: str) -> LoadedSchema:
    try:
        raw = json.loads(text)
        parsed = fastavro.parse_schema(raw)
    except (ValueError, fastavro.schema.SchemaParseException) as exc:
        raise SchemaError(f"invalid Avro schema {origin}: {exc}") from exc
    canonical = to_parsing_canonical_form(parsed)
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))  # fastavro gives the little-endian bytes in hex
    return LoadedSchema(name=raw["name"], text=text, parsed=parsed, fingerprint=fp)


@cache
def load_schema(name: str) -> LoadedSchema:
    """The current schema of event ``name``, parsed once; a bad or missing file stops start-up."""
    try:
        filename = SCHEMA_FILES[name]
    except KeyError:
        raise SchemaError(f"unknown event type {name!r}; known: {sorted(SCHEMA_FILES)}") from None
    try:
        text = resources.files("schemas").joinpath("avro", filename).read_text()
    except FileNotFoundError as exc:
        raise SchemaError(f"schema file schemas/avro/{filename} is missing") from exc
    return _load(text, f"schemas/avro/{filename}")


@cache
def history(name: str) -> tuple[LoadedSchema, ...]:
    """Every past version of ``name`` shipped in schemas/avro/history/, oldest first."""
    folder = resources.files("schemas").joinpath("avro", "history")
    stem = SCHEMA_FILES[name].removesuffix(".avsc")
    found = []
    if folder.is_dir():
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.startswith(stem + ".v") and entry.name.endswith(".avsc"):
                found.append(_load(entry.read_text(), f"schemas/avro/history/{entry.name}"))
    return tuple(found)


class AvroCodec(Generic[E]):
    """Encodes and decodes one event type. Thread-safe; build one per event type at start-up.

    ``encode``/``decode`` speak dicts (the records fastavro reads and writes); ``encode_event``/
    ``decode_event`` speak the typed classes of :mod:`schemas.events`.
    """

    # One overload per event, so ``AvroCodec("SynthesisRequest")`` is an ``AvroCodec[SynthesisRequest]`` to mypy.
    @overload
    def __init__(self: AvroCodec[SynthesisRequest], name: Literal["SynthesisRequest"], *,
                 registry: SchemaRegistry | None = None, subject: str | None = None) -> None: ...
    @overload
    def __init__(self: AvroCodec[SynthesisResult], name: Literal["SynthesisResult"], *,
                 registry: SchemaRegistry | None = None, subject: str | None = None) -> None: ...
    @overload
    def __init__(self: AvroCodec[JobCompletion], name: Literal["JobCompletion"], *,
                 registry: SchemaRegistry | None = None, subject: str | None = None) -> None: ...
    @overload
    def __init__(self: AvroCodec[DeadLetter], name: Literal["DeadLetter"], *,
                 registry: SchemaRegistry | None = None, subject: str | None = None) -> None: ...
    @overload
    def __init__(self: AvroCodec[SpeechSegment], name: Literal["SpeechSegment"], *,
                 registry: SchemaRegistry | None = None, subject: str | None = None) -> None: ...
    @overload
    def __init__(self: AvroCodec[WebhookDelivery], name: Literal["WebhookDelivery"], *,
                 registry: SchemaRegistry | None = None, subject: str | None = None) -> None: ...
    @overload
    def __init__(self, name: str, *, registry: SchemaRegistry | None = None, subject: str | None = None) -> None: ...

    def __init__(self, name: str, *, registry: SchemaRegistry | None = None, subject: str | None = None) -> None:
        self.schema = load_schema(name)
        self.event_type: type[E] = EVENT_TYPES[name]  # type: ignore[assignment]
        self._registry = registry
        self._subject = subject or f"ai.voicenote.v1.{name}"
        self._writers: dict[bytes, LoadedSchema] = {s.fingerprint: s for s in (*history(name), self.schema)}
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

    def encode_event(self, event: E) -> bytes:
        if not isinstance(event, self.event_type):
            raise EncodeError(f"{self.schema.name} codec cannot encode a {type(event).__name__}")
        return self.encode(event.to_record())

    def decode_event(self, data: bytes | None) -> E:
        """Decode either framing into the typed event, or raise DecodeError."""
        return self.event_type.from_record(self.decode(data))

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """Decode either framing into a dict of the current schema, or raise DecodeError."""
        if not data:
            raise DecodeError("undecodable", "empty message value")
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise DecodeError("undecodable", "truncated Avro single-object header")
            writer = self._writers.get(data[2:10])
            if writer is None:
                raise DecodeError(
                    "unknown_schema",
                    f"Avro fingerprint {data[2:10].hex()} is not a known {self.schema.name} schema",
                )
            return self._read(data[10:], writer.parsed)
        if data[:1] == CONFLUENT_MAGIC and len(data) >= 5:
            schema_id = struct.unpack(">I", data[1:5])[0]
            return self._read(data[5:], self._writer_for_id(schema_id))
        raise DecodeError(
            "undecodable",
            f"not an Avro event: expected single-object (c301) or Confluent (00) framing, got {data[:4].hex()!r}",
        )

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
        # timestamp-millis fields are epoch milliseconds in our code, as on the wire.
        return {k: _epoch_ms(v) if isinstance(v, datetime) else v for k, v in record.items()}


def _epoch_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


class Codecs:
    """One codec per event type, all sharing a registry (or none)."""

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.request = AvroCodec("SynthesisRequest", registry=registry)
        self.result = AvroCodec("SynthesisResult", registry=registry)
        self.completion = AvroCodec("JobCompletion", registry=registry)
        self.dead_letter = AvroCodec("DeadLetter", registry=registry)
        self.segment = AvroCodec("SpeechSegment", registry=registry)
        self.webhook_delivery = AvroCodec("WebhookDelivery", registry=registry)
