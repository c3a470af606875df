"""A request published straight to Kafka that the synthesis group dead-letters leaves nothing behind in Redis:
no job record, no entry in the watchdog's pending index (issue 25, defect 5). Real workers, broker and Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from confluent_kafka import Consumer, Producer

from schemas.codec import Codecs
from schemas.validation import REQUEST_DIGEST_FIELD
from tests.stack import Stack
from voicenote.jobstore import JobStore
from voicenote.kafka import client_config, ensure_topics

pytestmark = pytest.mark.e2e

BAD_ID = "../x y"


def _request(job_id: str, text: str) -> dict[str, Any]:
    return {"job_id": job_id, "created_at": int(time.time() * 1000), "text": text, "voice": "en_US-joe-medium",
            "format": "wav", "speed": 1.0, "priority": "batch", "model": "tts-1"}


def test_a_dead_lettered_direct_publish_is_never_indexed_as_pending(stack: Stack, unique: str) -> None:
    settings = stack.settings
    catalog = settings.kafka.catalog()
    ensure_topics(settings.kafka, catalog.all())
    stack.extra_env.update({"VOICENOTE_ENGINE__KIND": "null", "VOICENOTE_ENGINE__NULL_BATCH_SECONDS": "0.01"})
    stack.start_worker("synthesis")
    stack.start_worker("completion")

    codecs = Codecs()
    bad = codecs.request.encode(_request(BAD_ID, "A job id that is no job id."))
    marker_id = f"job_{unique}"
    producer = Producer(client_config(settings.kafka))
    # One partition, the bad record first: once the projection has recorded the marker, it has seen the bad record.
    producer.produce(catalog.requests.name, key=BAD_ID.encode(), value=bad, partition=0)
    producer.produce(catalog.requests.name, key=marker_id.encode(), value=codecs.request.encode(_request(marker_id, "A marker.")),
                     partition=0)
    assert producer.flush(10) == 0

    keys = JobStore(aioredis.Redis(), settings.redis)  # only for the key layout; never connects
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    try:
        deadline = time.monotonic() + 60
        while not client.hget(keys.job_key(marker_id), REQUEST_DIGEST_FIELD):
            stack.check_alive()
            assert time.monotonic() < deadline, f"the marker was never projected; log:\n{stack.log('worker-completion')[-3000:]}"
            time.sleep(0.2)
        letters = _dead_letters(settings, expect=1)
        assert client.zscore(keys.pending_key(), BAD_ID) is None, "a dead-lettered request is indexed as pending"
        assert not client.exists(keys.job_key(BAD_ID))
        # What the watchdog would look at, however late it runs: not the dead-lettered request.
        assert BAD_ID not in client.zrangebyscore(keys.pending_key(), "-inf", "+inf")
    finally:
        client.close()
    [letter] = letters
    assert (letter["value"], letter["key"], letter["consumer"]) == (bad, BAD_ID.encode(), "synthesis")
    assert letter["error_type"] == "invalid_request" and "job_id" in letter["error_message"]


def _dead_letters(settings: Any, expect: int, timeout: float = 30) -> list[dict[str, Any]]:
    consumer = Consumer({**client_config(settings.kafka), "group.id": f"{settings.worker.group_id}-dlq-check",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 2000, "heartbeat.interval.ms": 500})
    consumer.subscribe([settings.kafka.catalog().dead_letter.name])
    codecs, letters = Codecs(), []
    deadline = time.monotonic() + timeout
    while len(letters) < expect and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            letters.append(codecs.dead_letter.decode(msg.value()))
    consumer.close()
    return letters
