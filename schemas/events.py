"""One typed class per Avro record in ``schemas/avro/``: the events in code.

Each class mirrors its current ``.avsc`` field by field (name, order, type, optionality, default);
:func:`schema_mismatches` says where a class and its schema disagree, and
``tests/unit/test_events.py`` fails on any disagreement, so a field added to a schema has one place in
code. Timestamps (``timestamp-millis`` on the wire) are epoch milliseconds here, as everywhere in code.

Plain frozen dataclasses (see docs/architecture.md, "Typed events"): no dependency, no validation cost on
the hot path (fastavro already checks every field against the schema when it encodes), and
``to_record()``/``from_record()`` are a dict away from what fastavro reads and writes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

from schemas.errors import EncodeError


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of the typed events; ``SCHEMA`` is the Avro record name (the codec's event name)."""

    SCHEMA: ClassVar[str] = ""

    def to_record(self) -> dict[str, Any]:
        """The dict fastavro writes (maps copied, so the record does not alias the event)."""
        return {f.name: _copy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        """The event of a decoded (or hand-built) record; absent fields take their schema default."""
        names = _field_names(cls)
        unknown = set(record) - names
        if unknown:
            raise EncodeError(f"{cls.SCHEMA} has no field(s) {sorted(unknown)}")
        try:
            return cls(**{name: _copy(value) for name, value in record.items()})
        except TypeError as exc:  # a required field is missing
            raise EncodeError(f"{cls.SCHEMA}: {exc}") from exc


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def _field_names(cls: type[Event]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthesisRequest(Event):
    """A request to turn text into a voice note (voicenote.requests.v1, keyed by job_id)."""

    SCHEMA: ClassVar[str] = "SynthesisRequest"

    job_id: str
    created_at: int
    text: str
    voice: str = "default"
    format: str = "wav"
    speed: float = 1.0
    model: str = "default"
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    instructions: str | None = None
    webhook_url: str | None = None
    priority: str = "batch"
    deadline_at: int | None = None
    batch_id: str | None = None
    trace_parent: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    use_cache: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthesisResult(Event):
    """What the synthesis agent made of one request (voicenote.audio.v1, keyed by job_id)."""

    SCHEMA: ClassVar[str] = "SynthesisResult"

    job_id: str
    status: str
    created_at: int
    synthesized_at: int
    format: str = "wav"
    audio: bytes | None = None
    audio_ref: str | None = None
    sample_rate: int = 0
    duration_ms: int = 0
    engine: str = ""
    model_version: str = ""
    batch_size: int = 0
    queued_ms: int = 0
    batch_wait_ms: int = 0
    engine_ms: int = 0
    error_code: str | None = None
    error_message: str | None = None
    webhook_url: str | None = None
    batch_id: str | None = None
    trace_parent: str | None = None
    cache_key: str | None = None
    cache_hit: bool = False
    word_timestamps: str | None = None
    timestamps_unavailable: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobCompletion(Event):
    """The one visible outcome of a job (voicenote.completions.v1, keyed by job_id): the public interface."""

    SCHEMA: ClassVar[str] = "JobCompletion"

    job_id: str
    status: str
    created_at: int
    completed_at: int
    audio_key: str | None = None
    audio_uri: str | None = None
    content_type: str | None = None
    format: str = "wav"
    size_bytes: int = 0
    sample_rate: int = 0
    duration_ms: int = 0
    engine: str = ""
    model_version: str = ""
    batch_size: int = 0
    queued_ms: int = 0
    batch_wait_ms: int = 0
    engine_ms: int = 0
    upload_ms: int = 0
    error_code: str | None = None
    error_message: str | None = None
    webhook_url: str | None = None
    batch_id: str | None = None
    trace_parent: str | None = None
    audio_url: str | None = None
    cache_hit: bool = False
    word_timestamps: str | None = None
    timestamps_key: str | None = None
    timestamps_unavailable: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter(Event):
    """A record a consumer could not process, with its original bytes and where it came from."""

    SCHEMA: ClassVar[str] = "DeadLetter"

    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp: int | None = None
    key: bytes | None = None
    value: bytes | None = None
    headers: dict[str, bytes] = field(default_factory=dict)
    consumer: str
    error_type: str
    error_message: str
    failed_at: int


def carried(source: Event, target: type[Event]) -> dict[str, Any]:
    """The fields of ``source`` that ``target`` has too: what a stage carries forward from the event it
    got to the one it makes, so a field added to both schemas flows through without a change in code."""
    names = _field_names(target)
    return {f.name: _copy(getattr(source, f.name)) for f in dataclasses.fields(source) if f.name in names}


# A SynthesisRequest attribute ("true"): a caller streams the job, so the synthesis worker publishes each
# finished segment as a SpeechSegment. An attribute, not a field: old workers and readers just ignore it.
STREAM_ATTRIBUTE = "stream"

# SynthesisRequest attributes of a batch item (the API sets both, as decimal strings): its position in the batch
# request and the batch's number of items, so a lost batch record is rebuilt from the request topic with its
# job ids in the order they were asked for, and only when every item of the batch was published.
BATCH_INDEX_ATTRIBUTE = "batch_index"
BATCH_SIZE_ATTRIBUTE = "batch_size"

# A SynthesisRequest attribute: "word" asks for word timestamps (SynthesisResult/JobCompletion.word_timestamps);
# absent, none are computed. An attribute, not a field: an old worker ignores it, and the result then says nothing.
TIMESTAMPS_ATTRIBUTE = "timestamps"
WORD_TIMESTAMPS = "word"

# A SynthesisRequest attribute: the job id a replayed request (``voicenote replay``) was first published as.
REPLAY_OF_ATTRIBUTE = "replay_of"


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechSegment(Event):
    """One finished segment of a streaming job's audio (voicenote.segments.v1, keyed by job_id, in order)."""

    SCHEMA: ClassVar[str] = "SpeechSegment"

    job_id: str
    index: int
    count: int
    sample_rate: int
    pcm: bytes
    emitted_at: int
    word_timestamps: str | None = None


# WebhookDelivery.status: the job's webhook state after the attempt (the job record's webhook.status, less
# ``pending``, which is the state before any attempt).
WEBHOOK_DELIVERED = "delivered"
WEBHOOK_RETRYING = "retrying"
WEBHOOK_FAILED = "failed"
WEBHOOK_REFUSED = "refused"


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookDelivery(Event):
    """The outcome of one webhook delivery attempt (voicenote.webhooks.deliveries.v1, keyed by job_id): what the
    projection rebuild restores a job's webhook state from after Redis lost it."""

    SCHEMA: ClassVar[str] = "WebhookDelivery"

    job_id: str
    webhook_id: str
    status: str
    attempt: int
    attempted_at: int
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: int | None = None


EVENT_TYPES: dict[str, type[Event]] = {cls.SCHEMA: cls for cls in (SynthesisRequest, SynthesisResult, JobCompletion, DeadLetter,
                                                                    SpeechSegment, WebhookDelivery)}

E = TypeVar("E", bound=Event)

_PRIMITIVES: dict[str, type] = {"string": str, "int": int, "long": int, "float": float, "double": float,
                                "boolean": bool, "bytes": bytes}
_MISSING = object()


def python_type(avro_type: Any) -> Any:
    """The annotation a field of ``avro_type`` has in these classes (timestamp-millis: epoch ms, an int)."""
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        if len(branches) != 1 or len(avro_type) > 2:
            raise ValueError(f"only [null, T] unions are mapped, not {avro_type}")
        inner = python_type(branches[0])
        return inner | None if "null" in avro_type else inner
    if isinstance(avro_type, dict):
        if avro_type.get("type") == "map":
            return dict[str, python_type(avro_type["values"])]  # type: ignore[misc]
        return python_type(avro_type["type"])  # a logical type rides on its primitive
    if avro_type in _PRIMITIVES:
        return _PRIMITIVES[avro_type]
    raise ValueError(f"Avro type {avro_type!r} has no mapping to a Python annotation")


def schema_mismatches(cls: type[Event], schema: Mapping[str, Any]) -> list[str]:
    """Every way ``cls`` and the Avro record ``schema`` (parsed JSON) disagree; empty when they agree."""
    problems: list[str] = []
    if schema.get("name") != cls.SCHEMA:
        problems.append(f"{cls.__name__}: schema is record {schema.get('name')!r}, class says {cls.SCHEMA!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    avro_fields = list(schema["fields"])
    avro_names = [f["name"] for f in avro_fields]
    if list(fields) != avro_names:
        missing = [n for n in avro_names if n not in fields]
        extra = [n for n in fields if n not in avro_names]
        problems.append(f"{cls.__name__}: fields differ from the schema (missing {missing}, extra {extra}, "
                        f"or out of order: schema {avro_names}, class {list(fields)})")
    for avro_field in avro_fields:
        name = avro_field["name"]
        if name not in fields:
            continue
        try:
            expected = python_type(avro_field["type"])
        except ValueError as exc:
            problems.append(f"{cls.__name__}.{name}: {exc}")
            continue
        if not _same_type(hints[name], expected):
            problems.append(f"{cls.__name__}.{name}: annotated {hints[name]}, schema type {avro_field['type']} means {expected}")
        default = _default_of(fields[name])
        if "default" in avro_field:
            if default is _MISSING:
                problems.append(f"{cls.__name__}.{name}: schema default {avro_field['default']!r}, class has none")
            elif default != avro_field["default"] or type(default) is not type(_coerce(avro_field["default"], expected)):
                problems.append(f"{cls.__name__}.{name}: default {default!r}, schema default {avro_field['default']!r}")
        elif default is not _MISSING:
            problems.append(f"{cls.__name__}.{name}: default {default!r}, the schema has none (the field is required)")
    return problems


def _same_type(annotation: Any, expected: Any) -> bool:
    if isinstance(annotation, types.UnionType) or isinstance(expected, types.UnionType):
        return set(typing.get_args(annotation)) == set(typing.get_args(expected))
    return bool(annotation == expected)


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _MISSING


def _coerce(avro_default: Any, expected: Any) -> Any:
    # JSON has one number type: an Avro double default of 1 is 1.0 in code.
    if avro_default is None:
        return None
    base = next((a for a in typing.get_args(expected) if a is not type(None)), expected)
    return float(avro_default) if base is float and isinstance(avro_default, int) else avro_default
