"""Kafka, in one place: settings become client config (both client stacks), confluent-kafka client factories,
an asyncio-friendly idempotent producer, topic provisioning, reading a topic to its end, and the event codec
every reader and writer builds from settings.

- :mod:`voicenote.kafka.config`: ``client_config``, the settings read once for confluent-kafka and aiokafka;
- :mod:`voicenote.kafka.clients`: ``producer``, ``consumer``, ``admin_client`` (and their ``*_config``);
- :mod:`voicenote.kafka.async_producer`: ``AsyncProducer``;
- :mod:`voicenote.kafka.topics`: ``ensure_topics``, ``check_topics``, ``broker_answers``;
- :mod:`voicenote.kafka.reading`: ``read_to_end``, ``committed_offsets``;
- :mod:`voicenote.kafka.codec`: ``event_codecs``, the one codec of the wire events, registry included.

Every public name is importable from ``voicenote.kafka`` itself, with the confluent-kafka types and errors
the rest of the tree needs (``Consumer``, ``Message``, ``TopicPartition``, ``KafkaException``...).
"""

from __future__ import annotations

# The confluent-kafka names the rest of the tree uses (types, errors, offsets): the library is imported here
# and in voicenote/kafka/ only (the import-linter contract "kafka-libraries-in-one-place").
from confluent_kafka import (
    OFFSET_END,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec

from voicenote.kafka.async_producer import AsyncProducer
from voicenote.kafka.clients import (
    admin_client,
    admin_config,
    consumer,
    consumer_config,
    producer,
    producer_config,
)
from voicenote.kafka.codec import event_codecs, schema_registry
from voicenote.kafka.config import SASL_MECHANISMS, client_config
from voicenote.kafka.reading import OFFSET_BEGINNING, committed_offsets, list_offsets, read_to_end
from voicenote.kafka.topics import TopicCheck, broker_answers, check_topics, ensure_topics

__all__ = [
    "OFFSET_END",
    "Consumer",
    "ConsumerGroupTopicPartitions",
    "KafkaError",
    "KafkaException",
    "Message",
    "OffsetSpec",
    "Producer",
    "TopicCollection",
    "TopicPartition",
    "OFFSET_BEGINNING",
    "list_offsets",
    "committed_offsets",
    "SASL_MECHANISMS",
    "AsyncProducer",
    "TopicCheck",
    "admin_client",
    "admin_config",
    "broker_answers",
    "check_topics",
    "client_config",
    "consumer",
    "consumer_config",
    "ensure_topics",
    "event_codecs",
    "producer",
    "producer_config",
    "read_to_end",
    "schema_registry",
]
