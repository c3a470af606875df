"""Topic provisioning and checks against the catalog, through the admin client."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from schemas.topics import TopicSpec
from voicenote.errors import DependencyUnavailable
from voicenote.kafka.clients import admin_client
from voicenote.settings import KafkaSettings


def ensure_topics(settings: KafkaSettings, specs: Iterable[TopicSpec], *, timeout: float = 15.0) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise DependencyUnavailable("kafka", f"cannot list topics at {settings.bootstrap_servers}: {exc}") from exc
    wanted = [
        NewTopic(s.name, num_partitions=s.partitions, replication_factor=-1, config=s.config())
        for s in specs
        if s.name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, fut in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise DependencyUnavailable("kafka", f"cannot create topic {name}: {exc}") from exc
    return created


@dataclass(frozen=True)
class TopicCheck:
    """The catalog against the broker: topics it lacks, and topics with another partition count."""

    missing: list[str]
    wrong_partitions: list[tuple[str, int, int]]  # (topic, partitions found, partitions the catalog wants)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.wrong_partitions


def check_topics(settings: KafkaSettings, specs: Iterable[TopicSpec], *, timeout: float = 15.0) -> TopicCheck:
    """Whether every topic of ``specs`` exists with its partition count (nothing is created or changed).

    A topic whose metadata carries an error (not yet created, no leader yet) counts as missing. A topic
    with another partition count was made by something else: typically a broker that auto-creates
    topics on the first produce or subscribe (1 partition), before ``voicenote topics create`` ran.
    """
    try:
        topics = admin_client(settings).list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise DependencyUnavailable("kafka", f"cannot list topics at {settings.bootstrap_servers}: {exc}") from exc
    missing, wrong = [], []
    for spec in specs:
        meta = topics.get(spec.name)
        if meta is None or meta.error is not None:
            missing.append(spec.name)
        elif len(meta.partitions) != spec.partitions:
            wrong.append((spec.name, len(meta.partitions), spec.partitions))
    return TopicCheck(missing, wrong)


def broker_answers(settings: KafkaSettings, timeout: float = 2.0) -> bool:
    """Whether the cluster answers a metadata request within ``timeout``."""
    try:
        admin_client(settings).list_topics(timeout=timeout)
        return True
    except KafkaException:
        return False

