"""With a schema registry configured, the operator tools and the client read the service's registry-framed
events (issue 21): `voicenote watch`, `voicenote replay`, `voicenote dlq redrive` and VoicenoteClient, all
through voicenote.kafka.event_codecs, against the real broker and a Confluent-compatible registry."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ops.replay import Range, read_range, replay_requests
from schemas.codec import CONFLUENT_MAGIC
from schemas.errors import DecodeError
from tests.integration.test_cli import api_request, cli, dead_letter, produce  # noqa: F401 - cli is a fixture
from tests.integration.test_client import completion
from tests.registry_standin import RegistryStandIn
from voicenote.client import VoicenoteClient
from voicenote.kafka import ensure_topics, event_codecs
from voicenote.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def registered(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """This test's settings with a registry, in the environment the CLI reads too; the topics exist."""
    registry = RegistryStandIn().start()
    try:
        settings.kafka = settings.kafka.model_copy(update={"schema_registry_url": registry.url})
        monkeypatch.setenv("VOICENOTE_KAFKA__SCHEMA_REGISTRY_URL", registry.url)
        ensure_topics(settings.kafka, settings.kafka.catalog().all())
        yield settings
    finally:
        registry.stop()


def test_watch_and_the_client_read_registry_framed_completions(cli, registered: Settings) -> None:  # noqa: F811
    codecs = event_codecs(registered.kafka)  # what the completion worker writes with this configuration
    records = [completion("job_ok", audio_url="http://api/a"), completion("job_bad", "failed", error_code="engine_error")]
    values = [codecs.completion.encode(r) for r in records]
    assert all(v[:1] == CONFLUENT_MAGIC for v in values)
    produce(registered, registered.kafka.catalog().completions.name, [(r["job_id"].encode(), v) for r, v in zip(records, values, strict=True)])

    code, out, err = cli("watch", "--from-beginning", "-e", "--json")
    assert code == 0, err
    assert "undecodable" not in err
    assert sorted(json.loads(line)["job_id"] for line in out.splitlines()) == ["job_bad", "job_ok"]

    client = VoicenoteClient.from_env(bootstrap_servers=registered.kafka.bootstrap_servers,
                                      topic_prefix=registered.kafka.topic_prefix)
    try:
        seen = {c.job_id: c.status for c in client.completions(from_beginning=True, until_end=True)}
        assert seen == {"job_ok": "succeeded", "job_bad": "failed"}
        assert client.wait("job_ok", timeout=10, since_ms=0).audio_url == "http://api/a"
    finally:
        client.close()

    # Without the registry the same records cannot be read: the test reads what it claims to.
    plain = VoicenoteClient(registered.kafka.model_copy(update={"schema_registry_url": None}))
    with pytest.raises(DecodeError, match="no schema registry"):
        next(iter(plain.completions(from_beginning=True, until_end=True)))


def test_replay_reads_registry_framed_requests_and_writes_them_framed_again(cli, registered: Settings) -> None:  # noqa: F811
    codecs = event_codecs(registered.kafka)
    topic = registered.kafka.catalog().requests.name
    records = [api_request("job_a1", "alloy"), api_request("job_e1", "echo")]
    produce(registered, topic, [(r["job_id"].encode(), codecs.request.encode(r)) for r in records])

    code, out, err = cli("replay", "--filter", "voice=alloy", "--since", "2020-01-01T00:00:00Z", "--execute")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1]) == {"read": 2, "matched": 1, "published": 1, "undecodable": 0}
    values = [m.value() for m in read_range(registered.kafka, topic, Range())]
    assert all(v[:1] == CONFLUENT_MAGIC for v in values)  # the replayed request is framed as the service frames
    replayed = [r for r in map(codecs.request.decode, values) if "replay_of" in r["attributes"]]
    assert [r["attributes"]["replay_of"] for r in replayed] == ["job_a1"]

    report = replay_requests(registered.kafka, topic, Range(), {}, new_job_id=lambda: "unused", dry_run=True)
    assert report.undecodable == 0 and report.read == 3


def test_dlq_redrive_reads_registry_framed_letters(cli, registered: Settings) -> None:  # noqa: F811
    codecs = event_codecs(registered.kafka)
    catalog = registered.kafka.catalog()
    fixed = codecs.request.encode(api_request("job_r", "alloy"))
    letter = codecs.dead_letter.encode(dead_letter(registered, 7, "unknown_schema", fixed))
    assert letter[:1] == CONFLUENT_MAGIC
    produce(registered, catalog.dead_letter.name, [(b"", letter)])

    code, out, err = cli("dlq", "redrive", "--error-type", "unknown_schema", "--execute")
    assert code == 0, err
    assert json.loads(out) == {"read": 1, "matched": 1, "published": 1, "undecodable": 0}
    [back] = list(read_range(registered.kafka, catalog.requests.name, Range()))
    assert back.value() == fixed and codecs.request.decode(back.value())["job_id"] == "job_r"
