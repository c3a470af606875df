"""A broker restart is survived: it gets its port back, and the API's idempotent producer, stuck in a
fatal error once the broker forgot its producer id, is rebuilt (not ready meanwhile) and sends again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

from ops.services import TansuBroker
from schemas.topics import build_catalog
from voicenote.errors import PublishError
from voicenote.kafka import AsyncProducer, ensure_topics
from voicenote.settings import KafkaSettings


async def test_restarted_broker_gets_its_port_and_the_producer_recovers(tmp_path: Path) -> None:
    broker = TansuBroker(log_path=tmp_path / "tansu.log").start()
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="restart.", request_partitions=3, partitions=1)
    catalog = build_catalog(prefix="restart.", request_partitions=3, partitions=1)
    producer = AsyncProducer(settings, **{"delivery.timeout.ms": 6000})
    try:
        ensure_topics(settings, [catalog.requests])
        await producer.send(catalog.requests.name, b"before", key=b"k")
        port = broker.port
        broker.kill()
        broker.start()  # same port, at once: the old socket may linger
        assert broker.port == port
        ensure_topics(settings, [catalog.requests])  # in memory: the catalog makes the topics again

        sent_after = None
        deadline = time.monotonic() + 60
        while sent_after is None and time.monotonic() < deadline:
            try:
                sent_after = await producer.send(catalog.requests.name, b"after", key=b"k")
            except PublishError:
                await asyncio.sleep(0.3)  # in flight when the broker died, or refused while rebuilding
        assert sent_after is not None and sent_after.error() is None, f"no send succeeded; rebuilds={producer.rebuilds}"
        assert await producer.ping(timeout=5)
        assert producer.fatal is None

        # Only the catalog creates topics: a send to an unknown one fails instead of auto-creating it.
        try:
            await producer.send("restart.not-in-the-catalog", b"x")
        except PublishError:
            pass
        topics = AdminClient(settings.client_config()).list_topics(timeout=10).topics
        assert "restart.not-in-the-catalog" not in topics
        assert len(topics[catalog.requests.name].partitions) == 3
    finally:
        producer.close(timeout=1)
        broker.stop()
