"""The typed events agree with their Avro schemas, and a disagreement (either side) fails loudly."""

from __future__ import annotations

import copy
import dataclasses
import json
from importlib import resources
from typing import Any

import pytest

from schemas.codec import SCHEMA_FILES, AvroCodec, load_schema
from schemas.errors import EncodeError
from schemas.events import EVENT_TYPES, DeadLetter, Event, JobCompletion, SynthesisRequest, schema_mismatches


def _schema(name: str) -> dict[str, Any]:
    return json.loads(load_schema(name).text)


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def test_every_shipped_schema_has_exactly_one_class() -> None:
    shipped = {p.name for p in resources.files("schemas").joinpath("avro").iterdir() if p.name.endswith(".avsc")}
    assert shipped == set(SCHEMA_FILES.values())
    assert set(EVENT_TYPES) == set(SCHEMA_FILES)


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_class_and_schema_agree(name: str) -> None:
    assert schema_mismatches(EVENT_TYPES[name], _schema(name)) == []


def _rename(s: dict[str, Any]) -> str:
    _field(s, "voice")["name"] = "speaker"
    return "voice"


def _retype(s: dict[str, Any]) -> str:
    _field(s, "seed")["type"] = ["null", "string"]
    return "seed"


def _required(s: dict[str, Any]) -> str:
    f = _field(s, "webhook_url")
    f["type"] = "string"
    del f["default"]
    return "webhook_url"


def _optional(s: dict[str, Any]) -> str:
    _field(s, "text")["type"] = ["null", "string"]
    _field(s, "text")["default"] = None
    return "text"


def _default(s: dict[str, Any]) -> str:
    _field(s, "speed")["default"] = 1.5
    return "speed"


def _added(s: dict[str, Any]) -> str:
    s["fields"].append({"name": "language", "type": "string", "default": "en"})
    return "language"


def _removed(s: dict[str, Any]) -> str:
    s["fields"] = [f for f in s["fields"] if f["name"] != "priority"]
    return "priority"


def _map_values(s: dict[str, Any]) -> str:
    _field(s, "attributes")["type"] = {"type": "map", "values": "bytes"}
    return "attributes"


def _timestamp_as_string(s: dict[str, Any]) -> str:
    _field(s, "created_at")["type"] = "string"
    return "created_at"


def _bool_default_as_int(s: dict[str, Any]) -> str:
    _field(s, "use_cache")["default"] = 1
    return "use_cache"


@pytest.mark.parametrize("mutate", [_rename, _retype, _required, _optional, _default, _added, _removed, _map_values,
                                    _timestamp_as_string, _bool_default_as_int])
def test_a_mismatched_schema_field_fails_the_agreement(mutate: Any) -> None:
    schema = copy.deepcopy(_schema("SynthesisRequest"))
    field = mutate(schema)
    problems = schema_mismatches(SynthesisRequest, schema)
    assert problems, f"{mutate.__name__} went unnoticed"
    assert any(field in p for p in problems), problems


def test_a_mismatched_class_field_fails_the_agreement() -> None:
    # The same schema, a class whose size_bytes is a str: the mirror image of the schema mutations.
    fields = [(f.name, str if f.name == "size_bytes" else f.type, f) for f in dataclasses.fields(JobCompletion)]
    Broken = dataclasses.make_dataclass("JobCompletion", [(n, t, dataclasses.field(default=f.default, default_factory=f.default_factory, kw_only=True))
                                                           for n, t, f in fields], bases=(Event,), frozen=True)
    Broken.SCHEMA = "JobCompletion"  # type: ignore[attr-defined]
    problems = schema_mismatches(Broken, _schema("JobCompletion"))
    assert len(problems) == 1 and "size_bytes" in problems[0]


def test_a_record_round_trips_through_the_codec_as_a_typed_event() -> None:
    codec: AvroCodec[SynthesisRequest] = AvroCodec("SynthesisRequest")
    event = SynthesisRequest(job_id="job_1", created_at=1_700_000_000_123, text="Hi.", seed=7, attributes={"a": "b"})
    decoded = codec.decode_event(codec.encode_event(event))
    assert decoded == event
    assert codec.decode(codec.encode_event(event)) == event.to_record()  # the dict path reads the same bytes


def test_the_record_does_not_alias_the_event() -> None:
    event = DeadLetter(source_topic="t", source_partition=0, source_offset=1, headers={"h": b"v"}, consumer="c",
                       error_type="undecodable", error_message="m", failed_at=1)
    record = event.to_record()
    record["headers"]["x"] = b"y"
    assert event.headers == {"h": b"v"}


def test_from_record_refuses_unknown_and_missing_fields() -> None:
    with pytest.raises(EncodeError, match="no field"):
        SynthesisRequest.from_record({"job_id": "j", "created_at": 1, "text": "t", "speaker": "x"})
    with pytest.raises(EncodeError, match="text"):
        SynthesisRequest.from_record({"job_id": "j", "created_at": 1})


def test_a_codec_refuses_an_event_of_another_type() -> None:
    with pytest.raises(EncodeError, match="JobCompletion"):
        AvroCodec("SynthesisRequest").encode_event(JobCompletion(job_id="j", status="failed", created_at=1, completed_at=2))  # type: ignore[arg-type]
