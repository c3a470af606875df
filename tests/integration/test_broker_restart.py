"""A broker restart is survived: it gets its port back, and the API's idempotent producer, stuck in a
fatal error once the broker forgot its producer id, is rebuilt (not ready meanwhile) and sends again."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from ops.services import TansuBroker
from schemas.topics import build_catalog
from voicenote.errors import PublishError
from voicenote.kafka import AsyncProducer, admin_client, ensure_topics
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
        topics = admin_client(settings).list_topics(timeout=10).topics
        assert "restart.not-in-the-catalog" not in topics
        assert len(topics[catalog.requests.name].partitions) == 3
    finally:
        producer.close(timeout=1)
        broker.stop()


LAG_SAMPLER = """
import sys, time
from confluent_kafka import KafkaException
from producer_api.estimate import GroupLag
from voicenote.settings import KafkaSettings
reader = GroupLag(KafkaSettings(bootstrap_servers=sys.argv[1]), sys.argv[2])
deadline, last, wanted = time.monotonic() + 90, None, sys.argv[4]
while time.monotonic() < deadline and str(last) != wanted:  # until it reads the lag the test ends with
    try:
        last = reader.sample(sys.argv[3], 2, timeout=2.0)
    except KafkaException:
        last = None
    time.sleep(0.1)
reader.close()
print(last)
"""


def test_the_apis_lag_reader_outlives_broker_outages_and_reads_the_lag_again(tmp_path: Path) -> None:
    """The API samples its synthesis group's lag all the time. librdkafka's admin ListOffsets aborted the
    whole process when its requests timed out during a broker outage of a few seconds; the reader that
    replaced it (a consumer of the group that never joins) has to live through outages and read again."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    broker = TansuBroker(log_path=tmp_path / "tansu.log").start()
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="lagr.", request_partitions=2, partitions=1)
    catalog = build_catalog(prefix="lagr.", request_partitions=2, partitions=1)
    topic = catalog.requests.name
    try:
        ensure_topics(settings, [catalog.requests])
        def produce(n: int) -> None:  # one record per batch: Tansu 0.6's high watermark counts batches
            producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
            for i in range(n):
                producer.produce(topic, value=b"r", partition=i % 2)
                assert producer.flush(10) == 0

        produce(10)
        committer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "lag-group", "enable.auto.commit": False})
        committer.commit(offsets=[TopicPartition(topic, 0, 2), TopicPartition(topic, 1, 1)], asynchronous=False)
        committer.close()

        sampler = subprocess.Popen([sys.executable, "-c", LAG_SAMPLER, broker.bootstrap, "lag-group", topic, "(0, 6)"],
                                   cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(2)
        for _ in range(2):
            broker.kill()
            time.sleep(3)  # long enough for the requests in flight to time out
            broker.start()
            ensure_topics(settings, [catalog.requests])  # memory://: the topic (and the commits) went with it
            time.sleep(1)
        produce(6)
        out, err = sampler.communicate(timeout=120)
        assert sampler.returncode == 0, err.decode()[-2000:]
        # After the restarts the broker is empty but for these 6 records and no commits: lag 6 from offset 0.
        assert out.decode().strip() == "(0, 6)", (out, err.decode()[-1000:])
    finally:
        broker.stop()
