"""The topic catalog: the one place that names every topic and how it is configured.

Provisioning (``voicenote topics create``), the workers, the KEDA manifests (tested against this) and
the docs all derive from it. The version in each name moves only on an incompatible change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 24 * 3600 * 1000
WEBHOOK_RETRY_TIERS = 5  # retry n waits in tier min(n, 5); see stream_workers/webhooks/schedule.py

# One request topic per model family, so each engine's deployment (and its KEDA scaler) sees only its
# own lag. The CPU family keeps the original name: direct publishers written before families existed
# still reach it. voicenote/models.py maps each served model onto a family.
CPU_FAMILY = "piper"
REQUEST_FAMILIES = (CPU_FAMILY, "s1mini")


def request_topic_name(family: str, prefix: str = "") -> str:
    """``voicenote.requests.v1`` for the CPU family, ``voicenote.requests.<family>.v1`` for the others."""
    return f"{prefix}voicenote.requests.v1" if family == CPU_FAMILY else f"{prefix}voicenote.requests.{family}.v1"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    event: str | None  # the Avro record name its values carry
    retention_ms: int = 7 * DAY_MS
    cleanup_policy: str = "delete"
    max_message_bytes: int = 1_048_576
    compression: str = "producer"
    doc: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, str]:
        """Kafka topic configs for CreateTopics."""
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            "max.message.bytes": str(self.max_message_bytes),
            "compression.type": self.compression,
            **self.extra,
        }


@dataclass(frozen=True)
class TopicCatalog:
    """All topics, with partition counts taken from settings (24 request partitions by default)."""

    requests: TopicSpec  # the CPU family's request topic
    audio: TopicSpec
    completions: TopicSpec
    dead_letter: TopicSpec
    webhook_retries: tuple[TopicSpec, ...] = ()
    webhook_dead_letter: TopicSpec | None = None
    webhook_deliveries: TopicSpec | None = None  # every delivery attempt's outcome: the durable webhook state
    family_requests: tuple[tuple[str, TopicSpec], ...] = ()  # (family, topic) of the families beyond the CPU one
    segments: TopicSpec | None = None  # streaming jobs' audio, segment by segment

    def all(self) -> list[TopicSpec]:
        webhooks = [*self.webhook_retries, *([self.webhook_dead_letter] if self.webhook_dead_letter else []),
                    *([self.webhook_deliveries] if self.webhook_deliveries else [])]
        return [self.requests, *(spec for _, spec in self.family_requests), self.audio, self.completions, self.dead_letter,
                *webhooks, *([self.segments] if self.segments else [])]

    def request_topics(self) -> list[TopicSpec]:
        """Every model family's request topic, the CPU family's first."""
        return [self.requests, *(spec for _, spec in self.family_requests)]

    def requests_for(self, family: str) -> TopicSpec:
        """The request topic of one model family."""
        if family == CPU_FAMILY:
            return self.requests
        for name, spec in self.family_requests:
            if name == family:
                return spec
        raise KeyError(f"no request topic for model family {family!r}; families: {', '.join(REQUEST_FAMILIES)}")


def build_catalog(*, prefix: str = "", request_partitions: int = 24, partitions: int = 12) -> TopicCatalog:
    """The catalog; ``prefix`` isolates tests (and tenants) with their own topic names."""
    return TopicCatalog(
        requests=TopicSpec(
            request_topic_name(CPU_FAMILY, prefix),
            request_partitions,
            "SynthesisRequest",
            doc="Synthesis requests for the CPU (Piper) models tts-1, tts-1-hd and gpt-4o-mini-tts, keyed by job_id; "
                "one partition is the unit of worker parallelism.",
        ),
        family_requests=tuple(
            (family, TopicSpec(
                request_topic_name(family, prefix),
                request_partitions,
                "SynthesisRequest",
                doc=f"Synthesis requests for the {family} model family (its GPU workers consume only this topic), keyed by job_id.",
            ))
            for family in REQUEST_FAMILIES if family != CPU_FAMILY
        ),
        audio=TopicSpec(
            f"{prefix}voicenote.audio.v1",
            partitions,
            "SynthesisResult",
            retention_ms=1 * DAY_MS,
            max_message_bytes=4 * 1_048_576,
            doc="Synthesized audio (inline up to the claim-check threshold) or a synthesis failure.",
        ),
        completions=TopicSpec(
            f"{prefix}voicenote.completions.v1",
            partitions,
            "JobCompletion",
            retention_ms=14 * DAY_MS,
            doc="Public: one completion (succeeded, failed, cancelled) per job.",
        ),
        dead_letter=TopicSpec(
            f"{prefix}voicenote.deadletter.v1",
            1,
            "DeadLetter",
            retention_ms=30 * DAY_MS,
            max_message_bytes=8 * 1_048_576,
            doc="Records a consumer could not process, with their original bytes and the reason.",
        ),
        webhook_retries=tuple(
            TopicSpec(
                f"{prefix}voicenote.webhooks.retry-{tier}.v1",
                partitions,
                "JobCompletion",
                retention_ms=7 * DAY_MS,
                doc=f"Webhook deliveries waiting for retry {tier}{'+' if tier == WEBHOOK_RETRY_TIERS else ''}: the completion, "
                    "with webhook-attempt and webhook-due-at headers. The dispatcher pauses a partition until its head is due.",
            )
            for tier in range(1, WEBHOOK_RETRY_TIERS + 1)
        ),
        segments=TopicSpec(
            f"{prefix}voicenote.segments.v1",
            partitions,
            "SpeechSegment",
            # Only a waiting HTTP response reads a segment, within the synchronous timeout: an hour is plenty.
            retention_ms=3600 * 1000,
            max_message_bytes=4 * 1_048_576,
            doc="Streaming jobs' audio, one event per finished segment in order, keyed by job_id; every API process "
                "reads all partitions and hands each segment to the response waiting for its job.",
        ),
        webhook_dead_letter=TopicSpec(
            f"{prefix}voicenote.webhooks.deadletter.v1",
            1,
            "DeadLetter",
            retention_ms=30 * DAY_MS,
            doc="Webhook deliveries that failed every attempt or were refused; the value is the completion, "
                "the webhook-log header lists every attempt.",
        ),
        webhook_deliveries=TopicSpec(
            f"{prefix}voicenote.webhooks.deliveries.v1",
            partitions,
            "WebhookDelivery",
            # As long as the completions: every job the projection rebuild restores gets its webhook state back too.
            retention_ms=14 * DAY_MS,
            doc="The outcome of every webhook delivery attempt (delivered, retrying, failed, refused), keyed by job_id: "
                "the durable record of each job's webhook state, which `voicenote projection rebuild` restores into Redis.",
        ),
    )
