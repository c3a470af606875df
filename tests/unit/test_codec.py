"""The wire codec: both framings written and read, garbage refused with a reason."""

from __future__ import annotations

import struct

import pytest

from schemas.codec import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, AvroCodec, Codecs, load_schema
from schemas.errors import DecodeError, EncodeError
from schemas.registry import InMemorySchemaRegistry

REQUEST = {"job_id": "job_1", "created_at": 1_700_000_000_123, "text": "Hello there."}


def test_single_object_encoding_has_magic_and_fingerprint_and_round_trips() -> None:
    codec = AvroCodec("SynthesisRequest")
    data = codec.encode(REQUEST)
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == load_schema("SynthesisRequest").fingerprint
    decoded = codec.decode(data)
    assert decoded["job_id"] == "job_1"
    assert decoded["created_at"] == 1_700_000_000_123  # epoch ms, not datetime
    assert decoded["voice"] == "default" and decoded["speed"] == 1.0  # defaults filled


def test_fingerprint_is_crc64_avro_of_canonical_form() -> None:
    # Independent check of the CRC-64-AVRO (Rabin) fingerprint from the Avro specification.
    from fastavro.schema import to_parsing_canonical_form

    # Known vector from the Avro specification's test suite: "null" -> 0x63DD24E7CC258F8A.
    assert bytes.fromhex(__import__("fastavro").schema.fingerprint('"null"', "CRC-64-AVRO")) == (0x63DD24E7CC258F8A).to_bytes(8, "little")
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in to_parsing_canonical_form(load_schema("SynthesisRequest").parsed).encode():
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    assert load_schema("SynthesisRequest").fingerprint == fp.to_bytes(8, "little")


def test_confluent_framing_with_registry_round_trips_and_is_readable_by_a_registry_less_reader_only_via_registry() -> None:
    registry = InMemorySchemaRegistry()
    writer = AvroCodec("SynthesisRequest", registry=registry)
    data = writer.encode(REQUEST)
    assert data[:1] == CONFLUENT_MAGIC
    schema_id = struct.unpack(">I", data[1:5])[0]
    assert registry.schema_by_id(schema_id)
    assert AvroCodec("SynthesisRequest", registry=registry).decode(data)["text"] == "Hello there."
    with pytest.raises(DecodeError) as err:
        AvroCodec("SynthesisRequest").decode(data)
    assert err.value.reason == "unknown_schema"


def test_reader_with_registry_still_reads_single_object_events() -> None:
    single = AvroCodec("SynthesisRequest").encode(REQUEST)
    assert AvroCodec("SynthesisRequest", registry=InMemorySchemaRegistry()).decode(single)["job_id"] == "job_1"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "undecodable"),
        (b"plain text", "undecodable"),
        (b"\xc3\x01\x01\x02", "undecodable"),
        (b"\xc3\x01" + b"\xff" * 8 + b"\x02", "unknown_schema"),
    ],
)
def test_garbage_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        AvroCodec("SynthesisRequest").decode(data)
    assert err.value.reason == reason
    assert str(err.value)


def test_truncated_and_padded_bodies_are_refused() -> None:
    codec = AvroCodec("SynthesisRequest")
    data = codec.encode(REQUEST)
    with pytest.raises(DecodeError):
        codec.decode(data[:-3])
    with pytest.raises(DecodeError):
        codec.decode(data + b"\x00\x00")


def test_encoding_a_record_that_breaks_the_schema_fails_loudly() -> None:
    with pytest.raises(EncodeError):
        AvroCodec("SynthesisRequest").encode({"job_id": "j", "created_at": "yesterday", "text": "x"})


def test_every_event_type_round_trips() -> None:
    codecs = Codecs()
    result = {"job_id": "j", "status": "succeeded", "created_at": 1, "synthesized_at": 2, "audio": b"RIFF"}
    assert codecs.result.decode(codecs.result.encode(result))["audio"] == b"RIFF"
    completion = {"job_id": "j", "status": "failed", "created_at": 1, "completed_at": 2, "error_code": "engine_error"}
    assert codecs.completion.decode(codecs.completion.encode(completion))["error_code"] == "engine_error"
    letter = {"source_topic": "t", "source_partition": 0, "source_offset": 5, "value": b"\x00", "consumer": "c",
              "error_type": "undecodable", "error_message": "m", "failed_at": 3}
    assert codecs.dead_letter.decode(codecs.dead_letter.encode(letter))["source_offset"] == 5
