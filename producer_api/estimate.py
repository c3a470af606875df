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

Sampling runs in the background every ``api.estimate_refresh_seconds`` (``api.estimate_idle_refresh_seconds``
while nothing moves and nobody asks); requests only read the result.
It reads with a plain consumer of the group's id that never subscribes (OffsetFetch and watermarks),
not with the admin API: librdkafka 2.16's ListOffsets aborts the process (``rd_kafka_enq_once_del_source_return:
Assertion `eonce->refcnt > 0' failed``) when its requests time out while the broker is down for a few
seconds, which took the API down with the broker (tests/integration/test_broker_restart.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from voicenote.kafka import KafkaException, TopicPartition, list_offsets
from voicenote.kafka import consumer as new_consumer
from voicenote.settings import KafkaSettings

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
        self.on_asked: Callable[[], None] | None = None  # told of every estimate asked for (LagMonitor wakes on it)

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
        if self.on_asked is not None:
            self.on_asked()
        return round((self.lag + ahead + 1) / max(self.rate, _MIN_RATE), 2)


class GroupLag:
    """Reads a consumer group's committed positions and the topic's watermarks, without joining the group."""

    def __init__(self, kafka: KafkaSettings, group: str) -> None:
        self.group = group
        self._lock = threading.Lock()  # a sample in a worker thread and close() never overlap
        self._closed = False
        # log_level 2: the API's producer already logs a lost broker; this reader stays quiet.
        self._consumer = new_consumer(kafka, group, {"enable.auto.commit": False, "log_level": 2})

    def sample(self, topic: str, partitions: int, timeout: float = 5.0) -> tuple[int, int]:
        """(sum of committed positions, lag) of the group on ``topic``; raises KafkaException."""
        with self._lock:
            if self._closed:
                raise KafkaException(f"lag reader of {self.group} is closed")
            return self._sample(topic, partitions, timeout)

    def _sample(self, topic: str, partitions: int, timeout: float) -> tuple[int, int]:
        committed = self._consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=timeout)
        positions = {}
        for tp in committed:
            if tp.error is not None:
                raise KafkaException(tp.error)
            positions[(tp.topic, tp.partition)] = tp.offset
        ends = list_offsets(self._consumer, positions, "latest", timeout)
        # Nothing committed: the group starts at the earliest.
        starts = list_offsets(self._consumer, [part for part, at in positions.items() if at < 0], "earliest", timeout)
        total_committed = lag = 0
        for part, at in positions.items():
            position = at if at >= 0 else starts[part]
            total_committed += position
            lag += max(0, ends[part] - position)
        return total_committed, lag

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._consumer.close()


class LagMonitor:
    """Samples the lag in the background and keeps the estimator current."""

    def __init__(self, reader: GroupLag, topic: str, partitions: int, estimator: ThroughputEstimator, period: float,
                 idle_period: float | None = None) -> None:
        """``idle_period``: while the lag is 0 and the committed offsets do not move, sample only this often,
        or as soon as a request asks for an estimate (an idle API's lag reads were a steady load on an idle
        broker, issue 24). None: always every ``period``."""
        self.estimator = estimator
        self._reader, self._topic, self._partitions = reader, topic, partitions
        self._period, self._idle_period = period, idle_period
        self._task: asyncio.Task[None] | None = None
        self._asked = asyncio.Event()
        estimator.on_asked = self._asked.set

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lag-monitor")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last: tuple[int, int] | None = None
        while True:
            quiet = False
            try:
                committed, lag = await asyncio.to_thread(self._reader.sample, self._topic, self._partitions)
                self.estimator.observe(LagSample(loop.time(), committed, lag))
                quiet, last = lag == 0 and last == (committed, lag), (committed, lag)
            except KafkaException as exc:
                log.info("lag sample of %s failed (keeping the last estimate): %s", self._reader.group, exc)
            self._asked.clear()
            await asyncio.sleep(self._period)
            if quiet and self._idle_period is not None and not self._asked.is_set():
                try:
                    await asyncio.wait_for(self._asked.wait(), max(0.0, self._idle_period - self._period))
                except TimeoutError:
                    pass

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self._reader.close)  # waits for a sample still running in its thread
