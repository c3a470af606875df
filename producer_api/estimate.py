"""``estimated_seconds`` of an accepted job, from the synthesis group's lag and its measured throughput.

    estimated_seconds = (lag + 1) / throughput

- ``lag``: records on the request topic not yet committed by the synthesis group
  (sum over partitions of high watermark - committed offset; earliest offset where none is committed).
- ``throughput``: jobs per second the group actually gets through, an exponentially weighted average of
  (committed offsets gained) / (seconds between samples). Samples where the group is idle (no lag,
  no progress) say nothing about its speed and are skipped; until a first measurement, the configured
  prior is used. Samples where the group has lag but made no progress are skipped too: that is an
  outage (Redis, storage or the broker down, workers restarting), not the speed the group will have
  once it resumes. Averaging them in drove the rate to its floor and the estimate to 23,600 s during a
  10 s Redis outage; now the estimate grows with the lag only.

Sampling runs in the background every ``api.estimate_refresh_seconds``; requests only read the result.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

log = logging.getLogger(__name__)

_MIN_RATE = 0.01  # jobs/s; keeps a stalled group's estimate finite


@dataclass(frozen=True)
class LagSample:
    at: float  # monotonic seconds
    committed: int  # sum of the group's positions
    lag: int


class ThroughputEstimator:
    """Pure: turns successive lag samples into a throughput and an estimate."""

    def __init__(self, prior_rate: float, smoothing: float = 0.3) -> None:
        self.rate = prior_rate
        self.lag = 0
        self.measured = False
        self._alpha = smoothing
        self._last: LagSample | None = None

    def observe(self, sample: LagSample) -> None:
        last, self._last, self.lag = self._last, sample, sample.lag
        if last is None or sample.at <= last.at:
            return
        progress = sample.committed - last.committed
        if progress < 0:  # offsets reset or group re-created: start over
            return
        if progress == 0:
            return  # idle, or stalled by an outage: neither says how fast the group works
        observed = progress / (sample.at - last.at)
        self.rate = observed if not self.measured else self._alpha * observed + (1 - self._alpha) * self.rate
        self.measured = True

    def estimate_seconds(self, ahead: int = 0) -> float:
        """Seconds until a job submitted now (with ``ahead`` more of its own batch before it) is done."""
        return round((self.lag + ahead + 1) / max(self.rate, _MIN_RATE), 2)


def sample_lag(admin: AdminClient, group: str, topic: str, partitions: int, timeout: float = 5.0) -> tuple[int, int]:
    """(sum of committed positions, lag) of ``group`` on ``topic``; raises KafkaException."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    committed_future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)], request_timeout=timeout)[group]
    latest = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout)
    earliest = admin.list_offsets({tp: OffsetSpec.earliest() for tp in tps}, request_timeout=timeout)
    committed = {(tp.topic, tp.partition): tp.offset for tp in committed_future.result().topic_partitions}
    total_committed = lag = 0
    for tp in tps:
        key = (topic, tp.partition)
        end = latest[_find(latest, key)].result().offset
        position = committed.get(key, -1)
        if position < 0:
            position = earliest[_find(earliest, key)].result().offset
        total_committed += position
        lag += max(0, end - position)
    return total_committed, lag


def _find(futures: dict[TopicPartition, object], key: tuple[str, int]) -> TopicPartition:
    for tp in futures:
        if (tp.topic, tp.partition) == key:
            return tp
    raise KafkaException(f"no offset answer for {key}")


class LagMonitor:
    """Samples the lag in the background and keeps the estimator current."""

    def __init__(self, admin: AdminClient, group: str, topic: str, partitions: int, estimator: ThroughputEstimator,
                 period: float) -> None:
        self.estimator = estimator
        self._admin, self._group, self._topic, self._partitions = admin, group, topic, partitions
        self._period = period
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lag-monitor")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                committed, lag = await asyncio.to_thread(sample_lag, self._admin, self._group, self._topic, self._partitions)
                self.estimator.observe(LagSample(loop.time(), committed, lag))
            except KafkaException as exc:
                log.info("lag sample of %s failed (keeping the last estimate): %s", self._group, exc)
            await asyncio.sleep(self._period)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
