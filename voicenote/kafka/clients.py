"""Factories for confluent-kafka's clients, built from ``KafkaSettings``.

Every confluent-kafka Producer, Consumer and AdminClient of the project is made here: the connection and
security settings come from :func:`voicenote.kafka.config.client_config`, and each caller adds only the
properties of its own use (``overrides``, librdkafka names). Nothing else in the tree builds one by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from voicenote.kafka.config import client_config
from voicenote.settings import KafkaSettings


def producer_config(kafka: KafkaSettings, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka properties of a producer: the settings' connection and security, then ``overrides``."""
    return {**client_config(kafka), **(overrides or {})}


def consumer_config(kafka: KafkaSettings, group_id: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka properties of a consumer in ``group_id`` (librdkafka needs one even to only assign)."""
    return {**client_config(kafka), "group.id": group_id, **(overrides or {})}


def admin_config(kafka: KafkaSettings, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka properties of an admin client."""
    return {**client_config(kafka), **(overrides or {})}


def producer(kafka: KafkaSettings, overrides: Mapping[str, Any] | None = None) -> Producer:
    """A confluent-kafka Producer on the cluster ``kafka`` names."""
    return Producer(producer_config(kafka, overrides))


def consumer(kafka: KafkaSettings, group_id: str, overrides: Mapping[str, Any] | None = None) -> Consumer:
    """A confluent-kafka Consumer on the cluster ``kafka`` names, in ``group_id``."""
    return Consumer(consumer_config(kafka, group_id, overrides))


def admin_client(kafka: KafkaSettings, overrides: Mapping[str, Any] | None = None) -> AdminClient:
    """A confluent-kafka AdminClient on the cluster ``kafka`` names."""
    return AdminClient(admin_config(kafka, overrides))
