"""voicenote.kafka.AsyncProducer: which failed records mark the producer for rebuilding."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from voicenote.kafka import AsyncProducer
from voicenote.settings import KafkaSettings


@pytest.mark.parametrize("code", [KafkaError.PRODUCER_FENCED, KafkaError.UNKNOWN_PRODUCER_ID, KafkaError._MSG_TIMED_OUT])
def test_a_record_refused_for_the_producers_id_marks_the_producer_for_rebuilding(code: int) -> None:
    # Issue 25, defect 2: Tansu restarted on memory:// answered every later record of the API's producer with
    # PRODUCER_FENCED (not fatal to librdkafka), and the API refused every request with 503 until it was restarted.
    producer = AsyncProducer(KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    try:
        producer._stop.set()  # no rebuild in the background: the test reads the mark itself
        producer._poller.join(5)
        producer._on_failed_delivery(KafkaError(KafkaError.LEADER_NOT_AVAILABLE))
        assert producer.fatal is None  # retried by the client itself: no reason to rebuild
        producer._on_failed_delivery(KafkaError(code))
        assert producer.fatal is not None
    finally:
        producer.close(0)
