"""``voicenote lag``: how far each consumer group is behind, per partition.

The end of a partition is the broker's high watermark. Kafka counts records; the Tansu broker of the
embedded default counts produce batches there, so on Tansu the lag of a batching producer's topic reads
low (see docs/client.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from voicenote.errors import DependencyUnavailable
from voicenote.kafka import ConsumerGroupTopicPartitions, KafkaException, OffsetSpec, TopicPartition, admin_client
from voicenote.settings import KafkaSettings


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int
    lag: int


def list_groups(settings: KafkaSettings, timeout: float = 10.0) -> list[str]:
    """Every consumer group the cluster knows."""
    admin = admin_client(settings)
    try:
        result = admin.list_consumer_groups(request_timeout=timeout).result()
    except KafkaException as exc:
        raise DependencyUnavailable("kafka", f"listing consumer groups: {exc}") from exc
    return sorted(g.group_id for g in result.valid)


def group_lag(settings: KafkaSettings, group: str, timeout: float = 10.0) -> list[PartitionLag]:
    """Committed position, end and lag of every partition ``group`` has committed on; empty for an unknown group."""
    admin = admin_client(settings)
    try:
        answer = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout)[group].result()
        committed = [tp for tp in answer.topic_partitions or [] if tp.offset >= 0]
        if not committed:
            return []
        ends = admin.list_offsets({TopicPartition(tp.topic, tp.partition): OffsetSpec.latest() for tp in committed},
                                  request_timeout=timeout)
        end_of = {(tp.topic, tp.partition): fut.result().offset for tp, fut in ends.items()}
    except KafkaException as exc:
        raise DependencyUnavailable("kafka", f"reading the offsets of group {group}: {exc}") from exc
    rows = []
    for tp in sorted(committed, key=lambda t: (t.topic, t.partition)):
        end = end_of[(tp.topic, tp.partition)]
        rows.append(PartitionLag(group, tp.topic, tp.partition, tp.offset, end, max(0, end - tp.offset)))
    return rows
