"""voicenote.client against the real broker: what it publishes, and completions read back as objects."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from ops.replay import Range, read_range
from schemas.codec import Codecs
from schemas.errors import DecodeError
from voicenote.client import Completion, InvalidRequest, JobTimeout, VoicenoteClient
from voicenote.kafka import client_config, ensure_topics
from voicenote.settings import Settings

pytestmark = pytest.mark.integration


def completion(job_id: str, status: str = "succeeded", **extra: object) -> dict:
    now = int(time.time() * 1000)
    return {"job_id": job_id, "status": status, "created_at": now - 500, "completed_at": now, "duration_ms": 1200, **extra}


def publish_completions(settings: Settings, records: list[dict], junk: bool = False) -> None:
    """What a completion worker writes (the same codec, keyed by job id)."""
    codecs = Codecs()
    producer = Producer(client_config(settings.kafka))
    for r in records:
        producer.produce(settings.kafka.catalog().completions.name, key=r["job_id"].encode(), value=codecs.completion.encode(r))
    if junk:
        producer.produce(settings.kafka.catalog().completions.name, key=b"junk", value=b"not avro")
    assert producer.flush(10) == 0


@pytest.fixture
def client(settings: Settings) -> VoicenoteClient:
    ensure_topics(settings.kafka, settings.kafka.catalog().all())
    return VoicenoteClient(settings.kafka)


def test_publish_writes_the_request_as_the_api_does(client: VoicenoteClient, settings: Settings) -> None:
    job_id = client.publish("Hello there.", voice="alloy", format="mp3", attributes={"customer": "c1"}, seed=7,
                            headers={"x-origin": "batch-7"})
    client.flush()
    [msg] = list(read_range(settings.kafka, client.requests_topic, Range()))
    record = Codecs().request.decode(msg.value())
    assert msg.key() == job_id.encode() and record["job_id"] == job_id
    assert record["voice"] == "en_US-joe-medium"  # resolved, as the API does
    assert record["attributes"] == {"voice_requested": "alloy", "model_requested": "tts-1", "customer": "c1"}
    assert (record["format"], record["seed"], record["text"]) == ("mp3", 7, "Hello there.")
    headers = dict(msg.headers())
    assert headers["traceparent"].decode() == record["trace_parent"] and headers["x-origin"] == b"batch-7"


def test_publish_routes_each_model_to_its_family_topic(client: VoicenoteClient, settings: Settings) -> None:
    job_id = client.publish("Hallo.", model="openaudio-s1-mini", voice="alloy")
    client.flush()
    s1mini_topic = settings.kafka.catalog().requests_for("s1mini").name
    assert s1mini_topic != client.requests_topic
    [msg] = list(read_range(settings.kafka, s1mini_topic, Range()))
    record = Codecs().request.decode(msg.value())
    assert (record["job_id"], record["model"], record["voice"]) == (job_id, "s1-mini", "default")
    assert record["attributes"]["model_requested"] == "openaudio-s1-mini"
    assert list(read_range(settings.kafka, client.requests_topic, Range())) == []


@pytest.mark.parametrize(("text", "options", "reason"), [
    ("", {}, "text must not be empty"),
    ("x" * 5000, {}, "maximum is 4096"),
    ("hi", {"voice": "bob"}, "unknown voice 'bob'"),
    ("hi", {"format": "ogg"}, "format must be one of"),
    ("hi", {"job_id": "has space"}, "job_id must be"),
    ("hi", {"seed": "seven"}, "does not match its schema"),
])
def test_invalid_requests_are_refused_and_nothing_is_sent(client: VoicenoteClient, settings: Settings, text: str,
                                                           options: dict, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        client.publish(text, **options)
    client.flush()
    assert list(read_range(settings.kafka, client.requests_topic, Range())) == []


def test_completions_come_back_typed_and_undecodable_ones_are_reported(client: VoicenoteClient, settings: Settings) -> None:
    publish_completions(settings, [completion("job_a", audio_url="http://api/v1/jobs/job_a/audio"),
                                   completion("job_b", "failed", error_code="engine_error", error_message="boom")], junk=True)
    with pytest.raises(DecodeError, match="not an Avro event"):  # the server codec's error, as before
        list(client.completions(from_beginning=True, until_end=True))
    bad: list[tuple[int, str]] = []
    got = list(client.completions(from_beginning=True, until_end=True,
                                  on_undecodable=lambda m, e: bad.append((m.offset(), e.reason))))
    assert [reason for _offset, reason in bad] == ["undecodable"]
    by_id = {c.job_id: c for c in got}
    assert set(by_id) == {"job_a", "job_b"}
    assert isinstance(by_id["job_a"], Completion) and by_id["job_a"].ok and by_id["job_a"].audio_url.endswith("job_a/audio")
    assert not by_id["job_b"].ok and (by_id["job_b"].error_code, by_id["job_b"].error_message) == ("engine_error", "boom")
    assert by_id["job_b"].record["status"] == "failed"


def test_wait_finds_the_job_and_times_out_on_a_missing_one(client: VoicenoteClient, settings: Settings) -> None:
    job_id = client.publish("Hello.")
    client.flush()
    publish_completions(settings, [completion("job_other"), completion(job_id)])
    done = client.wait(job_id, timeout=30)
    assert done.job_id == job_id and done.ok
    with pytest.raises(JobTimeout, match="job_never"):
        client.wait("job_never", timeout=2, since_ms=int(time.time() * 1000) - 60_000)


def test_a_group_resumes_where_it_stopped(client: VoicenoteClient, settings: Settings) -> None:
    publish_completions(settings, [completion("job_1"), completion("job_2")])
    group = f"{settings.worker.group_id}-client"
    first = [c.job_id for c in client.completions(group_id=group, from_beginning=True, until_end=True)]
    assert sorted(first) == ["job_1", "job_2"]
    publish_completions(settings, [completion("job_3")])
    again = [c.job_id for c in client.completions(group_id=group, from_beginning=True, until_end=True)]
    assert again == ["job_3"]


def test_an_unreachable_broker_is_a_publish_error(settings: Settings) -> None:
    from voicenote.errors import PublishError

    client = VoicenoteClient(settings.kafka, bootstrap_servers="127.0.0.1:1")
    client.publish("Hello.")
    with pytest.raises(PublishError, match="not acknowledged|refused"):
        client.close(timeout=3)


def test_publish_takes_a_delivery_callback(client: VoicenoteClient, settings: Settings) -> None:
    delivered: list[tuple[object, str]] = []
    job_id = client.publish("Hello.", on_delivery=lambda err, jid: delivered.append((err, jid)))
    client.flush()
    assert delivered == [(None, job_id)]
    [msg] = list(read_range(settings.kafka, client.requests_topic, Range()))
    assert msg.key() == job_id.encode()


def test_an_unreadable_completion_topic_is_a_dependency_error(settings: Settings) -> None:
    from voicenote.errors import DependencyUnavailable

    client = VoicenoteClient(settings.kafka, topic_prefix="missing.")  # no topics under this prefix
    with pytest.raises(DependencyUnavailable, match="missing.voicenote.completions.v1 does not exist.*voicenote topics create"):
        list(client.completions(until_end=True))
    with pytest.raises(DependencyUnavailable):
        client.wait("job_x", timeout=1)
