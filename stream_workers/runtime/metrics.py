"""The workers' metrics, in one place (Prometheus text format on each worker's web port).

The loop and the result cache report events here; no other module of the worker defines metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiokafka.errors import IllegalStateError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from schemas.events import JobCompletion

_SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 32, 64)
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# The result cache (stream_workers/runtime/result_cache.py) counts its lookups here; module-level because a worker
# has one cache while benchmarks and tests build several. Rendered on the synthesis worker's /metrics next
# to SynthesisMetrics (stream_workers/app.py).
CACHE_REGISTRY = CollectorRegistry()
CACHE_LOOKUPS = Counter(
    "voicenote_result_cache_lookups", "Result-cache lookups by outcome; hit ratio = hit / (hit + miss).", ["outcome"],
    registry=CACHE_REGISTRY,
)
CACHE_HIT_RATIO = Gauge("voicenote_result_cache_hit_ratio", "Hits over lookups since this worker started.",
                        registry=CACHE_REGISTRY)


class SynthesisMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        prefix = "voicenote_synthesis_"
        self.batch_size = Histogram(prefix + "batch_size", "Items (segments) per engine batch.", buckets=_SIZES, registry=r)
        self.batch_fill_wait = Histogram(prefix + "batch_fill_wait_seconds", "First item's arrival to the batch closing.",
                                         buckets=_SECONDS, registry=r)
        self.engine_seconds = Histogram(prefix + "engine_seconds", "Submission to last row done, per admitted group.", buckets=_SECONDS, registry=r)
        self.padding_waste = Histogram(prefix + "padding_waste_ratio", "Padding share of a padded batch (by characters).",
                                       buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9), registry=r)
        self.real_time_factor = Gauge(prefix + "real_time_factor", "Engine seconds per second of audio, last batch.", registry=r)
        self.audio_seconds = Counter(prefix + "audio_seconds", "Seconds of audio synthesized.", registry=r)
        self.engine_busy = Counter(prefix + "engine_busy_seconds", "Time the engine spent on batches.", registry=r)
        self.engine_idle = Counter(prefix + "engine_idle_seconds", "Time the engine waited between batches.", registry=r)
        self.engine_idle_fraction = Gauge(prefix + "engine_idle_fraction", "idle / (idle + busy) since start.", registry=r)
        self.results = Counter(prefix + "results", "Result events published, by status.", ["status"], registry=r)
        self.dead_letters = Counter(prefix + "dead_letters", "Request events dead-lettered.", registry=r)
        self.skipped = Counter(prefix + "skipped_redeliveries", "Redelivered requests whose job was already done.", registry=r)
        # Labelled by the exporter itself (issue 21): its consumer group and the model family its engine serves, so a
        # dashboard splits CPU and GPU lag whatever the scrape config adds.
        self.consumer_lag = Gauge(prefix + "consumer_lag", "Request events not yet committed by this worker.",
                                  ["group", "model"], registry=r)
        self._busy = 0.0
        self._idle = 0.0

    def batch(self, size: int, fill_wait: float, engine_seconds: float, audio_seconds: float, waste: float) -> None:
        self.batch_size.observe(size)
        self.batch_fill_wait.observe(fill_wait)
        self.engine_seconds.observe(engine_seconds)
        self.padding_waste.observe(waste)
        self.audio_seconds.inc(audio_seconds)
        if audio_seconds > 0:
            self.real_time_factor.set(engine_seconds / audio_seconds)

    def busy(self, seconds: float) -> None:
        """A stretch with rows in the engine (groups overlap in a continuous engine, so not per group)."""
        self.engine_busy.inc(seconds)
        self._busy += seconds
        self._update_fraction()

    def idle(self, seconds: float) -> None:
        self.engine_idle.inc(seconds)
        self._idle += seconds
        self._update_fraction()

    @property
    def idle_fraction(self) -> float:
        total = self._busy + self._idle
        return self._idle / total if total else 0.0

    def _update_fraction(self) -> None:
        self.engine_idle_fraction.set(self.idle_fraction)

    def render(self) -> bytes:
        return generate_latest(self.registry)


_JOB_SECONDS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)


def _epoch_seconds(value: Any) -> float:
    # Avro's timestamp-millis decodes to an aware datetime; a record built in code may still hold the int.
    return value.timestamp() if isinstance(value, datetime) else float(value) / 1000


def job_latency_seconds(completion: JobCompletion) -> float:
    """Request created (the API's or publisher's ``created_at``) to completion, never negative (clock skew)."""
    return max(0.0, _epoch_seconds(completion.completed_at) - _epoch_seconds(completion.created_at))


class CompletionMetrics:
    """The completion role: end-to-end job latency and outcomes (one observation per completion event)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.job_latency = Histogram("voicenote_job_latency_seconds", "Request created to completion event, by status.",
                                     ["status"], buckets=_JOB_SECONDS, registry=r)
        self.completions = Counter("voicenote_completions", "Completion events published, by status.", ["status"], registry=r)
        self.dead_letters = Counter("voicenote_completion_dead_letters", "Audio events the completion role dead-lettered.",
                                    registry=r)
        self.consumer_lag = Gauge("voicenote_completion_consumer_lag", "Audio events not yet committed by this worker.",
                                  ["group"], registry=r)

    def completed(self, completions: list[JobCompletion]) -> None:
        for completion in completions:
            self.job_latency.labels(completion.status).observe(job_latency_seconds(completion))
            self.completions.labels(completion.status).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def records_behind(highwaters: Mapping[Any, int], committed: Mapping[Any, int | None]) -> int:
    """Records between each partition's committed offset and its end, summed (a partition with neither: 0 behind)."""
    return sum(max(0, end - (committed.get(tp) or 0)) for tp, end in highwaters.items())


def track_committed_offsets(app: Any) -> None:
    """Keep ``app.monitor.tp_committed_offsets`` to the partitions this worker holds.

    Faust's Monitor records every commit there (``Monitor.on_tp_commit``, its public sensor hook); a
    partition handed to another worker is forgotten, so a later reassignment does not read its old offset.
    """

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        for tp in revoked:
            app.monitor.tp_committed_offsets.pop(tp, None)


async def faust_consumer_lag(app: Any) -> int:
    """Records not yet committed over a Faust app's assigned partitions, from public Faust calls only.

    A partition this worker has not committed yet counts from its consumer position, which starts at the
    group's committed offset: an idle partition reads 0 behind, not its whole length.
    """
    consumer = app.consumer
    commits = app.monitor.tp_committed_offsets
    committed: dict[Any, int | None] = {}
    for tp in consumer.assignment():
        offset = commits.get(tp)
        if offset is None:
            try:
                offset = await consumer.position(tp)
            except IllegalStateError:
                continue  # revoked since assignment() answered: another worker's lag now
        committed[tp] = offset
    return records_behind({tp: consumer.highwater(tp) for tp in committed}, committed)


class ProgressMetrics:
    """Every worker: how long its consumer group has been behind without a committed offset moving
    (stream_workers/runtime/progress.py; 0 while nothing is behind)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.seconds_since_progress = Gauge(
            "voicenote_seconds_since_progress", "Seconds the group has had lag with no committed offset moving (0: none behind).",
            ["group"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class WebhookMetrics:
    """The webhook dispatcher: what became of each delivery attempt."""

    OUTCOMES = ("delivered", "retrying", "failed", "refused")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.deliveries = Counter("voicenote_webhook_deliveries", "Webhook attempts by outcome (failed/refused: dead-lettered).",
                                  ["outcome"], registry=self.registry)
        for outcome in self.OUTCOMES:
            self.deliveries.labels(outcome)  # every series exists from the start, so rate() sees the first one

    def outcome(self, outcome: str) -> None:
        self.deliveries.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
