"""The standalone client (clients/python, ``voicenote_client``) speaks the server's wire format exactly.

Its schemas and request rules are copies of the server's (``make client-schemas``): these tests fail
while they differ, and round-trip records between the client's codec and the server's in both
framings. Its model table is checked against the server's model registry.
"""

from __future__ import annotations

import ast
import filecmp
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import voicenote_client
from voicenote_client import codec as client_codec
from voicenote_client.models import MODELS, route

from schemas import codec as server_codec
from schemas.registry import HttpSchemaRegistry
from tests.registry_standin import RegistryStandIn
from voicenote.client import InvalidRequest as ServerInvalidRequest
from voicenote.client import VoicenoteClient as ServerClient
from voicenote.models import ModelRegistry
from voicenote.settings import KafkaSettings, ModelSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "python" / "src" / "voicenote_client"
COMPLETION = {"job_id": "job_c", "status": "failed", "created_at": 1_000, "completed_at": 2_000, "duration_ms": 0,
              "error_code": "engine_error", "error_message": "boom", "audio_url": None, "format": "mp3"}


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_tests_use_the_client_of_this_checkout() -> None:
    assert Path(voicenote_client.__file__).resolve().parent == PACKAGE


def test_the_vendored_schemas_are_the_servers_byte_for_byte() -> None:
    server, client = files(ROOT / "schemas" / "avro"), files(PACKAGE / "avro")
    assert server, "no schemas found"
    hint = "run `make client-schemas` to copy schemas/avro/ into clients/python"
    assert sorted(client) == sorted(server), hint
    assert [name for name in server if server[name] != client[name]] == [], hint
    # Every event the server knows is one the client can load (and with the same history).
    assert client_codec.SCHEMA_FILES == server_codec.SCHEMA_FILES
    for name in server_codec.SCHEMA_FILES:
        assert client_codec.load_schema(name).fingerprint == server_codec.load_schema(name).fingerprint
        assert [s.fingerprint for s in client_codec.history(name)] == [s.fingerprint for s in server_codec.history(name)]


def test_the_request_rules_are_the_servers() -> None:
    assert filecmp.cmp(ROOT / "schemas" / "validation.py", PACKAGE / "_validation.py", shallow=False), \
        "run `make client-schemas`: clients/python's request rules differ from schemas/validation.py"


def test_the_package_imports_only_its_three_dependencies_and_the_standard_library() -> None:
    import sys

    allowed = {"confluent_kafka", "fastavro", "httpx", "voicenote_client", "__future__"}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, f"{path.name} imports {name}"


@pytest.mark.parametrize("event", ["SynthesisRequest", "JobCompletion"])
def test_single_object_records_round_trip_between_client_and_server(event: str) -> None:
    record = COMPLETION if event == "JobCompletion" else voicenote_client.VoicenoteClient(
        {"bootstrap.servers": "unused:9092"}).request("Hello there.", voice="alloy", seed=7, attributes={"a": "b"})
    client, server = client_codec.AvroCodec(event), server_codec.AvroCodec(event)  # type: ignore[var-annotated]
    data = client.encode(record)
    assert data == server.encode(record)  # the same bytes, header included
    assert data[:2] == b"\xc3\x01" and data[2:10] == server.schema.fingerprint
    assert server.decode(data) == client.decode(data) == client.decode(server.encode(record))
    assert {k: v for k, v in server.decode(data).items() if k in record} == dict(record)


@pytest.fixture
def registry() -> Iterator[RegistryStandIn]:
    standin = RegistryStandIn().start()
    try:
        yield standin
    finally:
        standin.stop()


def test_registry_framed_records_round_trip_between_client_and_server(registry: RegistryStandIn) -> None:
    client = client_codec.Codecs(client_codec.HttpSchemaRegistry(registry.url))
    server = server_codec.Codecs(HttpSchemaRegistry(registry.url))
    from_client = client.completion.encode(COMPLETION)
    from_server = server.completion.encode(COMPLETION)
    assert from_client == from_server and from_client[:1] == b"\x00"  # the same subject, so the same schema id
    assert registry.lookup("ai.voicenote.v1.JobCompletion", server_codec.load_schema("JobCompletion").text) is not None
    # Read cold (a fresh codec knows no ids yet): each fetches the writer schema from the registry by id.
    fresh_client = client_codec.Codecs(client_codec.HttpSchemaRegistry(registry.url))
    assert fresh_client.completion.decode(from_server)["error_message"] == "boom"
    request = voicenote_client.VoicenoteClient({"bootstrap.servers": "unused:9092"}, schema_registry_url=registry.url)
    framed = request.encode(request.request("Hi there.", model="s1-mini", seed=1))
    assert struct.unpack(">I", framed[1:5])[0] > 0
    assert server_codec.Codecs(HttpSchemaRegistry(registry.url)).request.decode(framed)["model"] == "s1-mini"
    # A reader without a registry says so instead of guessing.
    with pytest.raises(client_codec.DecodeError, match="no schema registry") as caught:
        client_codec.Codecs().completion.decode(from_server)
    assert caught.value.reason == "unknown_schema"


def test_undecodable_values_are_refused_as_the_server_refuses_them() -> None:
    codec = client_codec.AvroCodec("JobCompletion")
    for junk, reason in [(b"", "undecodable"), (b"not avro", "undecodable"), (b"\xc3\x01" + b"\x00" * 8 + b"x", "unknown_schema"),
                         (server_codec.AvroCodec("JobCompletion").encode(COMPLETION) + b"\x00", "undecodable")]:
        with pytest.raises(client_codec.DecodeError) as caught:
            codec.decode(junk)
        assert caught.value.reason == reason


def test_the_model_table_matches_the_servers_registry() -> None:
    settings = Settings(kafka=KafkaSettings(topic_prefix="tenant."), models=ModelSettings(s1mini_voices=[]))
    registry = ModelRegistry.from_settings(settings)
    assert sorted(MODELS) == sorted(registry.names())
    for name in registry.names():
        model, mine = registry.get(name), route(name)
        assert (mine.id, mine.family, mine.topic("tenant.")) == (model.id, model.family, model.request_topic)
        for voice in [*model.voice_names(), "default"]:
            expected = model.default_voice if voice == "default" else model.resolve_voice(voice).id
            assert mine.resolve_voice(voice) == expected, (name, voice)


def test_a_request_is_the_one_the_server_client_builds() -> None:
    fixed: dict[str, Any] = {"job_id": "job_same", "trace_parent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    variants: list[dict[str, Any]] = [dict(voice="alloy", format="mp3", attributes={"customer": "c1"}, seed=7),
                                      dict(model="openaudio-s1-mini", voice="nova", temperature=0.7, priority="interactive")]
    for options in variants:
        mine = voicenote_client.VoicenoteClient({"bootstrap.servers": "unused:9092"}).request("Hello.", **fixed, **options)
        theirs = ServerClient(KafkaSettings()).request("Hello.", **fixed, **options)
        mine.pop("created_at"), theirs.pop("created_at")
        assert mine == theirs


def test_a_registered_voice_is_published_as_its_id_for_s1mini_only() -> None:
    # docs/voices.md: a vc_ id goes to the workers as it is (they say voice_not_found if it is missing).
    fixed: dict[str, Any] = {"job_id": "job_vc", "trace_parent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
                             "model": "s1-mini", "voice": "vc_0123456789abcdef01234567"}
    mine = voicenote_client.VoicenoteClient({"bootstrap.servers": "unused:9092"}).request("Hello.", **fixed)
    theirs = ServerClient(KafkaSettings()).request("Hello.", **fixed)
    mine.pop("created_at"), theirs.pop("created_at")
    assert mine == theirs and theirs["voice"] == fixed["voice"]
    with pytest.raises(ServerInvalidRequest, match="voice_model_mismatch"):
        ServerClient(KafkaSettings()).request("Hello.", **{**fixed, "model": "tts-1"})


def test_bad_requests_are_refused_before_anything_is_sent() -> None:
    client = voicenote_client.VoicenoteClient({"bootstrap.servers": "unused:9092"})
    cases: list[tuple[str, dict[str, Any], str]] = [("", {}, "text must not be empty"), ("Hi.", {"format": "ogg"}, "format must be one of"),
             ("Hi.", {"model": "tts-9"}, "unknown model"), ("Hi.", {"speed": 9.0}, "speed must be")]
    for text, options, message in cases:
        with pytest.raises(voicenote_client.InvalidRequest, match=message):
            client.submit(text, **options)
    with pytest.raises(voicenote_client.InvalidRequest, match="does not match its schema"):
        client.submit("Hi.", seed="seven")
    assert client._producer is None  # nothing was ever queued
    with pytest.raises(ValueError, match="bootstrap.servers"):
        voicenote_client.VoicenoteClient({"security.protocol": "SSL"})


class _TenantRouter:
    """A router of one's own: every model to one topic, voices looked up in a dict."""

    def __init__(self) -> None:
        self.voices = {"narrator": "voice_123"}

    def resolve(self, model: str, voice: str) -> tuple[str, str]:
        if voice not in self.voices:
            raise ValueError(f"unknown voice {voice!r} for this tenant")
        return "s1-mini", self.voices[voice]

    def topic(self, model_id: str) -> str:
        return f"tenant.requests.{model_id}"


class _StrictError(Exception):
    pass


class _StrictCodecs:
    """A codec object that is not voicenote_client.Codecs, with errors of its own."""

    def __init__(self) -> None:
        self.request, self.completion = self, self

    def encode(self, record: Any) -> bytes:
        if record.get("seed") == 13:
            raise _StrictError("seed 13 is refused")
        return b"encoded"

    def decode(self, data: bytes | None) -> dict[str, Any]:
        raise _StrictError("never decodes")


def test_a_router_and_a_codec_of_ones_own_replace_the_stock_ones() -> None:
    client = voicenote_client.VoicenoteClient({"bootstrap.servers": "unused:9092"}, router=_TenantRouter(),
                                              codecs=_StrictCodecs(), encode_errors=(_StrictError,))
    assert client.requests_topic == "tenant.requests.tts-1"
    record = client.request("Hello.", voice="narrator")
    assert (record["model"], record["voice"], record["attributes"]["voice_requested"]) == ("s1-mini", "voice_123", "narrator")
    with pytest.raises(voicenote_client.InvalidRequest, match="unknown voice 'alloy' for this tenant"):
        client.request("Hello.", voice="alloy")
    assert client.encode(record) == b"encoded"
    with pytest.raises(voicenote_client.InvalidRequest, match="seed 13 is refused"):  # an encode_errors error: refused
        client.encode({**record, "seed": 13})
    # Without the hooks nothing changed: the stock table, which passes unknown voice ids through.
    stock = voicenote_client.VoicenoteClient({"bootstrap.servers": "unused:9092"}, topic_prefix="t.")
    assert isinstance(stock.router, voicenote_client.StockRouter)
    assert stock.requests_topic == "t.voicenote.requests.v1"
    assert stock.request("Hi.", model="s1-mini", voice="narrator")["voice"] == "narrator"


def test_the_server_client_is_the_standalone_one_set_up_from_settings() -> None:
    from pydantic import SecretStr

    from schemas.errors import DecodeError, EncodeError
    from voicenote.client import InvalidRequest, JobTimeout
    from voicenote.errors import VoicenoteError
    from voicenote.kafka.config import LIBRDKAFKA_LOGGER

    settings = KafkaSettings(bootstrap_servers="broker:9093", topic_prefix="tenant.", security_protocol="SASL_SSL",
                             sasl_mechanism="SCRAM-SHA-512", sasl_username="svc", sasl_password=SecretStr("pw"),
                             ssl_ca_location="/etc/ca.pem", delivery_timeout_ms=4321)
    client = ServerClient(settings)
    assert isinstance(client, voicenote_client.VoicenoteClient)
    # The librdkafka config is voicenote.kafka's (SASL/TLS included); the producer is idempotent as the API's.
    assert client.config == {"bootstrap.servers": "broker:9093", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                             "sasl.username": "svc", "sasl.password": "pw", "ssl.ca.location": "/etc/ca.pem",
                             "enable.metrics.push": False, "logger": LIBRDKAFKA_LOGGER}
    assert client.producer_config == {"enable.idempotence": True, "delivery.timeout.ms": 4321}
    assert client.consumer_config == {"session.timeout.ms": settings.session_timeout_ms,
                                      "heartbeat.interval.ms": settings.heartbeat_interval_ms}
    assert isinstance(client.codecs, server_codec.Codecs)  # voicenote.kafka.event_codecs
    assert (client.encode_errors, client.decode_errors) == ((EncodeError,), (DecodeError,))
    assert client.requests_topic == "tenant.voicenote.requests.v1"
    assert client.completions_topic == "tenant.voicenote.completions.v1"
    assert client.router.topic("s1-mini") == "tenant.voicenote.requests.s1mini.v1"
    # The deployment's registry decides voices: an unknown one is refused here (the stock table passes it on).
    with pytest.raises(InvalidRequest, match="unknown voice 'bob'") as caught:
        client.request("Hi.", voice="bob")
    assert isinstance(caught.value, VoicenoteError) and isinstance(caught.value, voicenote_client.InvalidRequest)
    assert voicenote_client.VoicenoteClient({"bootstrap.servers": "unused:9092"}).request("Hi.", voice="bob")["voice"] == "bob"
    with pytest.raises(InvalidRequest, match="does not match its schema"):  # the server codec's EncodeError, as InvalidRequest
        client.submit("Hi.", seed="seven")
    assert client._producer is None
    assert issubclass(JobTimeout, VoicenoteError) and issubclass(JobTimeout, voicenote_client.JobTimeout)
    assert ServerClient.publish is ServerClient.submit
