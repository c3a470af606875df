"""Every schema change is backward compatible: today's readers decode every released version.

schemas/avro/history/ keeps each released version (<stem>.vN.avsc). A change to a schema adds the new
version there; this test writes random records with each released version and reads them with the
current schema, and checks that the current schema is itself released (so the next change is tested
against it).
"""

from __future__ import annotations

import io
import json

import fastavro
import pytest
from fastavro.utils import generate_many

from schemas.codec import SCHEMA_FILES, AvroCodec, history, load_schema


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_current_schema_reads_every_released_version(name: str) -> None:
    current = load_schema(name)
    released = history(name)
    assert released, f"{name} has no released version in schemas/avro/history/"
    for old in released:
        for record in generate_many(old.parsed, 25):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, old.parsed, record)
            buf.seek(0)
            fastavro.schemaless_reader(buf, old.parsed, current.parsed)  # raises on incompatibility


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_current_schema_is_the_latest_release(name: str) -> None:
    latest = history(name)[-1]
    assert json.loads(latest.text) == json.loads(load_schema(name).text), (
        f"{name} changed: copy it to schemas/avro/history/ as the next version"
    )


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_events_written_with_an_old_release_decode_through_the_codec(name: str) -> None:
    old = history(name)[0]
    record = next(iter(generate_many(old.parsed, 1)))
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + old.fingerprint)
    fastavro.schemaless_writer(buf, old.parsed, record)
    assert isinstance(AvroCodec(name).decode(buf.getvalue()), dict)


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_schemas_have_namespace_docs_and_defaults_for_optional_fields(name: str) -> None:
    raw = json.loads(load_schema(name).text)
    assert raw["namespace"] == "ai.voicenote.v1"
    for field in raw["fields"]:
        if isinstance(field["type"], list) and "null" in field["type"]:
            assert "default" in field, f"{name}.{field['name']} is optional but has no default"
