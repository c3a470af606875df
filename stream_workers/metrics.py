"""The synthesis worker's metrics, in one place (Prometheus text format on the worker's web port).

The loop reports events here; nothing else in the worker touches counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 32, 64)
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
        self.consumer_lag = Gauge(prefix + "consumer_lag", "Request events not yet committed by this worker.", registry=r)
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
