"""Provisioning and the idempotent producer against the real broker."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer

from schemas.topics import build_catalog
from voicenote.errors import PublishError
from voicenote.kafka import AsyncProducer, admin_client, broker_answers, client_config, ensure_topics
from voicenote.settings import KafkaSettings, Settings

pytestmark = pytest.mark.integration


def test_provisioning_creates_the_catalog_once(settings: Settings) -> None:
    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=6, partitions=2)
    created = ensure_topics(settings.kafka, catalog.all())
    assert sorted(created) == sorted(s.name for s in catalog.all())
    assert ensure_topics(settings.kafka, catalog.all()) == []
    topics = admin_client(settings.kafka).list_topics(timeout=5).topics
    assert len(topics[catalog.requests.name].partitions) == 6


async def test_send_resolves_after_the_broker_acknowledged(settings: Settings) -> None:
    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=2, partitions=1)
    ensure_topics(settings.kafka, [catalog.requests])
    producer = AsyncProducer(settings.kafka)
    try:
        msgs = [await producer.send(catalog.requests.name, f"v{i}".encode(), key=b"same-key") for i in range(5)]
    finally:
        assert producer.close() == 0
    assert len({m.partition() for m in msgs}) == 1  # one key, one partition
    offsets = [m.offset() for m in msgs]
    assert offsets == sorted(offsets) and offsets[0] >= 0
    consumer = Consumer({**client_config(settings.kafka), "group.id": settings.worker.group_id, "auto.offset.reset": "earliest",
                         "session.timeout.ms": 2000, "heartbeat.interval.ms": 500})
    consumer.subscribe([catalog.requests.name])
    seen = []
    for _ in range(40):
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            seen.append(msg.value())
        if len(seen) == 5:
            break
    consumer.close()
    assert seen == [f"v{i}".encode() for i in range(5)]


async def test_unreachable_broker_fails_the_send_instead_of_hanging() -> None:
    dead = KafkaSettings(bootstrap_servers="127.0.0.1:1", delivery_timeout_ms=1500)
    assert not broker_answers(dead, timeout=0.5)
    producer = AsyncProducer(dead, **{"socket.connection.setup.timeout.ms": 1000})
    try:
        with pytest.raises(PublishError):
            await producer.send("nowhere", b"x")
    finally:
        producer.close(timeout=0.1)
