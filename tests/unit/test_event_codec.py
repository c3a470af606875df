"""The one event codec (voicenote.kafka.event_codecs): built from settings, it writes the deployment's framing and
reads both; every reader of the tree takes its codec from it, so a registry-framed record reads the same everywhere."""

from __future__ import annotations

import ast
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.codec import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, load_schema
from schemas.errors import DecodeError
from schemas.registry import InMemorySchemaRegistry
from tests.registry_standin import RegistryStandIn
from voicenote.client import VoicenoteClient
from voicenote.kafka import event_codecs, schema_registry
from voicenote.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
COMPLETION = {"job_id": "job_c", "status": "succeeded", "created_at": 1_000, "completed_at": 2_000, "duration_ms": 900}


@pytest.fixture
def registry() -> Iterator[RegistryStandIn]:
    standin = RegistryStandIn().start()
    try:
        yield standin
    finally:
        standin.stop()


def test_without_a_registry_the_codec_writes_single_object_encoding() -> None:
    codecs = event_codecs(KafkaSettings())
    assert schema_registry(KafkaSettings()) is None and not codecs.completion.uses_registry
    data = codecs.completion.encode(COMPLETION)
    assert data[:2] == SINGLE_OBJECT_MAGIC and data[2:10] == load_schema("JobCompletion").fingerprint
    assert codecs.completion.decode(data)["job_id"] == "job_c"


def test_with_a_registry_the_codec_writes_the_confluent_framing_and_reads_it_cold(registry: RegistryStandIn) -> None:
    kafka = KafkaSettings(schema_registry_url=registry.url)
    data = event_codecs(kafka).completion.encode(COMPLETION)
    schema_id = struct.unpack(">I", data[1:5])[0]
    assert data[:1] == CONFLUENT_MAGIC and schema_id >= 1
    # Another process (a reader that never wrote, so it knows no id yet) fetches the writer schema by id.
    assert event_codecs(kafka).completion.decode_event(data).job_id == "job_c"


def test_a_registry_reader_still_reads_single_object_records(registry: RegistryStandIn) -> None:
    plain = event_codecs(KafkaSettings()).request.encode({"job_id": "job_r", "created_at": 1, "text": "hello"})
    assert event_codecs(KafkaSettings(schema_registry_url=registry.url)).request.decode(plain)["text"] == "hello"


def test_a_registry_framed_record_needs_the_registry(registry: RegistryStandIn) -> None:
    # The bug this codec removes: tools built their codec without the settings' registry and could not read it.
    framed = event_codecs(KafkaSettings(schema_registry_url=registry.url)).completion.encode(COMPLETION)
    with pytest.raises(DecodeError, match="no schema registry is configured") as caught:
        event_codecs(KafkaSettings()).completion.decode(framed)
    assert caught.value.reason == "unknown_schema"


def test_an_injected_registry_replaces_the_settings_one() -> None:
    memory = InMemorySchemaRegistry()
    codecs = event_codecs(KafkaSettings(schema_registry_url="http://127.0.0.1:1"), registry=memory)
    data = codecs.dead_letter.encode({"source_topic": "t", "source_partition": 0, "source_offset": 1, "key": None,
                                      "value": b"v", "consumer": "c", "error_type": "e", "error_message": "m", "failed_at": 1})
    assert data[:1] == CONFLUENT_MAGIC and codecs.dead_letter.decode(data)["value"] == b"v"


def test_the_client_reads_with_the_settings_registry(registry: RegistryStandIn) -> None:
    framed = event_codecs(KafkaSettings(schema_registry_url=registry.url)).completion.encode(COMPLETION)
    client = VoicenoteClient(KafkaSettings(schema_registry_url=registry.url))
    assert client.codecs.completion.decode(framed)["job_id"] == "job_c"
    assert not VoicenoteClient(KafkaSettings()).codecs.completion.uses_registry


def _calls(path: Path, names: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...)")
    return found


def _sources() -> list[Path]:
    paths = []
    for package in ("voicenote", "producer_api", "stream_workers", "ops", "schemas"):
        paths += [p for p in (ROOT / package).rglob("*.py") if "bench" not in p.parts]  # benches measure raw clients
    return paths


def test_only_voicenote_kafka_builds_codecs_from_settings_and_kafka_clients() -> None:
    """No reader builds its own Codecs (which would miss the registry) and no module builds a confluent-kafka
    client by hand: both come from voicenote.kafka, built from settings (security and registry included)."""
    allowed = {ROOT / "voicenote" / "kafka" / "codec.py", ROOT / "voicenote" / "kafka" / "clients.py",
               ROOT / "voicenote" / "kafka" / "async_producer.py",  # rebuilds its producer from the factory's config
               ROOT / "schemas" / "codec.py"}
    found = [hit for path in _sources() if path not in allowed
             for hit in _calls(path, {"Codecs", "AvroCodec", "Consumer", "Producer", "AdminClient", "HttpSchemaRegistry"})]
    assert found == []
