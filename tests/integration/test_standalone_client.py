"""The standalone client (voicenote_client) against the real broker: what it publishes is what the server
reads (decoded here with the server's codec, as the synthesis workers do), and completions written the way
the completion worker writes them come back through its sync and asyncio APIs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer
from voicenote_client import AsyncVoicenoteClient, Completion, JobTimeout, PublishError, VoicenoteClient

from ops.replay import Range, read_range
from schemas.codec import Codecs
from voicenote.kafka import client_config, ensure_topics
from voicenote.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def kafka(settings: Settings) -> dict[str, Any]:
    """The librdkafka dict a user would write (here: the one the server builds from its settings)."""
    ensure_topics(settings.kafka, settings.kafka.catalog().all())
    return client_config(settings.kafka)


def complete(settings: Settings, request: dict[str, Any], status: str = "succeeded", **extra: Any) -> dict[str, Any]:
    """What the completion worker publishes for ``request`` (the server's codec, keyed by job id)."""
    now = int(time.time() * 1000)
    record = {"job_id": request["job_id"], "status": status, "created_at": request["created_at"], "completed_at": now,
              "format": request["format"], "duration_ms": 1234, "audio_url": f"https://audio.example/{request['job_id']}",
              **extra}
    producer = Producer(client_config(settings.kafka))
    producer.produce(settings.kafka.catalog().completions.name, key=record["job_id"].encode(),
                     value=Codecs().completion.encode(record))
    assert producer.flush(10) == 0
    return record


def consume_requests(settings: Settings, topic: str) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    """The request topic as a synthesis worker reads it: every record decoded by the server's codec."""
    codec = Codecs().request
    return [(codec.decode(m.value()), dict(m.headers() or [])) for m in read_range(settings.kafka, topic, Range())]


def test_submit_with_a_delivery_callback_then_the_server_reads_it(settings: Settings, kafka: dict[str, Any]) -> None:
    delivered: list[tuple[KafkaError | None, str]] = []
    with VoicenoteClient(kafka, topic_prefix=settings.kafka.topic_prefix) as client:
        assert client.requests_topic == settings.kafka.catalog().requests.name
        job_id = client.submit("Your parcel is on its way.", voice="alloy", format="mp3", attributes={"customer": "c1"},
                               headers={"x-origin": "batch-7"}, on_delivery=lambda err, jid: delivered.append((err, jid)))
        s1_job = client.submit("Hallo.", model="openaudio-s1-mini", seed=3, on_delivery=lambda err, jid: delivered.append((err, jid)))
        client.flush()
        assert sorted(delivered, key=lambda d: d[1]) == sorted([(None, job_id), (None, s1_job)], key=lambda d: d[1])

    [(record, headers)] = consume_requests(settings, settings.kafka.catalog().requests.name)
    assert record["job_id"] == job_id and record["voice"] == "en_US-joe-medium" and record["format"] == "mp3"
    assert record["attributes"] == {"voice_requested": "alloy", "model_requested": "tts-1", "customer": "c1"}
    assert headers["traceparent"].decode() == record["trace_parent"] and headers["x-origin"] == b"batch-7"
    [(s1_record, _)] = consume_requests(settings, settings.kafka.catalog().requests_for("s1mini").name)
    assert (s1_record["job_id"], s1_record["model"], s1_record["seed"]) == (s1_job, "s1-mini", 3)

    # The worker's answer, read back by the sync API.
    complete(settings, record)
    with VoicenoteClient(kafka, topic_prefix=settings.kafka.topic_prefix) as reader:
        done = reader.wait(job_id, timeout=20, since_ms=record["created_at"] - 60_000)
    assert (done.job_id, done.status, done.ok, done.duration_ms, done.format) == (job_id, "succeeded", True, 1234, "mp3")


def test_a_failed_delivery_reaches_the_callback_and_flush(settings: Settings, kafka: dict[str, Any]) -> None:
    # Over the producer's size limit: librdkafka refuses it at once, and nothing is queued.
    client = VoicenoteClient(kafka, topic_prefix=settings.kafka.topic_prefix, producer_config={"message.max.bytes": 1000})
    with pytest.raises(PublishError, match="too large"):
        client.submit("Hello. " * 500)
    client.close(5)
    # A broker that never answers: the delivery report says so, to the callback and to flush.
    delivered: list[tuple[KafkaError | None, str]] = []
    client = VoicenoteClient({**kafka, "bootstrap.servers": "127.0.0.1:1"}, producer_config={"message.timeout.ms": 1000})
    job_id = client.submit("Hello.", on_delivery=lambda err, jid: delivered.append((err, jid)))
    with pytest.raises(PublishError, match=job_id):
        client.close(10)
    [(err, jid)] = delivered
    assert jid == job_id and err is not None and err.code() == KafkaError._MSG_TIMED_OUT


async def test_the_asyncio_api_submits_on_ack_and_streams_completions(settings: Settings, kafka: dict[str, Any]) -> None:
    acked: list[tuple[KafkaError | None, str]] = []
    # Short group timeouts, as the tests' settings give the services: a group forms in seconds on the test broker.
    group_timeouts = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}
    async with AsyncVoicenoteClient(kafka, topic_prefix=settings.kafka.topic_prefix, consumer_config=group_timeouts) as client:
        ids = await asyncio.gather(*(client.submit(f"Note number {i}.", priority="interactive",
                                                   on_delivery=lambda err, jid: acked.append((err, jid))) for i in range(3)))
        # submit returned only after the broker acknowledged: every callback has run, without a flush.
        assert sorted(acked, key=lambda a: a[1]) == sorted(((None, j) for j in ids), key=lambda a: a[1])

        requests = {r["job_id"]: r for r, _ in consume_requests(settings, client.requests_topic)}
        assert set(requests) == set(ids) and {r["priority"] for r in requests.values()} == {"interactive"}
        waiting = asyncio.create_task(client.wait(ids[0], timeout=30))
        await asyncio.sleep(0.5)  # it reads from shortly before the job was submitted, so an early answer is not missed
        complete(settings, requests[ids[0]])
        complete(settings, requests[ids[1]], status="failed", error_code="engine_error", error_message="boom")
        complete(settings, requests[ids[2]])
        first = await waiting
        assert isinstance(first, Completion) and first.job_id == ids[0] and first.ok

        seen: dict[str, Completion] = {}
        async for done in client.completions(from_beginning=True, until_end=True):
            seen[done.job_id] = done
        assert set(seen) == set(ids)
        assert (seen[ids[1]].status, seen[ids[1]].error_code, seen[ids[1]].error_message) == ("failed", "engine_error", "boom")

        # A consumer group keeps the position: what one pass finished, the next does not see again.
        group = f"{settings.kafka.topic_prefix}billing"
        first_pass = [d.job_id async for d in client.completions(group_id=group, from_beginning=True, until_end=True)]
        assert sorted(first_pass) == sorted(ids)
        assert [d.job_id async for d in client.completions(group_id=group, from_beginning=True, until_end=True)] == []
        with pytest.raises(JobTimeout):
            await client.wait("job_never", timeout=1, since_ms=int(time.time() * 1000))


async def test_an_async_submit_the_broker_never_acknowledges_raises(kafka: dict[str, Any]) -> None:
    delivered: list[tuple[KafkaError | None, str]] = []
    client = AsyncVoicenoteClient({**kafka, "bootstrap.servers": "127.0.0.1:1"}, producer_config={"message.timeout.ms": 1000})
    with pytest.raises(PublishError, match="timed out") as caught:
        await client.submit("Hello.", job_id="job_lost", on_delivery=lambda err, jid: delivered.append((err, jid)))
    assert "job_lost" in str(caught.value)
    [(err, jid)] = delivered
    assert jid == "job_lost" and err is not None and err.code() == KafkaError._MSG_TIMED_OUT
    await client.close(1)  # nothing left to report: the submit raised it
