"""Readiness that watches progress, not connections (issue 22).

A worker can be connected to a broker that answers and still consume nothing: after a broker restart
on disk storage, workers stayed ``ready`` for 40 minutes with 98 jobs queued. :class:`BrokerWatch`
(stream_workers/runtime/probes.py) only asks whether the broker answers. This module asks whether the worker's
consumer group moves:

- :class:`ProgressWatch` (pure logic, a clock passed in) is fed, per watched partition, the group's
  committed offset and the partition's end. It is *stalled* while some partition has lag and no
  partition's committed offset has moved for ``stall_seconds``; a committed offset moving, or no lag
  left, clears it.
- :class:`GroupOffsets` reads those with a confluent-kafka consumer of the group that never joins it
  (the API's lag sampler does the same, producer_api/estimate.py; not the admin API, whose ListOffsets
  aborted a process in a broker outage). It asks the broker itself, so a consumer whose fetch loop is
  stuck does not hide its own stall.
- :class:`ProgressMonitor` runs a round every ``worker.progress_check_seconds``: reads, feeds the watch,
  puts ``progress`` under ``waiting_on`` in ``/readyz`` while stalled, sets
  ``voicenote_seconds_since_progress{group}``, and past ``stall_exit_seconds`` exits the process with
  :data:`STALL_EXIT_CODE` (``voicenote run``'s supervisor and the kubelet start it again, with a fresh
  consumer). It does not exit while the broker does not answer its reads, nor while another dependency
  (Redis, storage) is waited on: a new process would wait on the same thing.

Committed offsets, not fetch positions, are watched: the synthesis worker reads ahead of its engine, so
its position can sit at the end while nothing is finished. Watched partitions are those assigned to the
worker (less those its role holds back on purpose: the webhook dispatcher's partitions parked until a
retry is due); a worker holding none watches every partition of its topics, so a group whose members
lost their assignment still shows as stalled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import IllegalStateError
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from voicenote.kafka import KafkaException, TopicCollection, TopicPartition, admin_client, list_offsets
from voicenote.kafka import consumer as new_consumer
from voicenote.retry import DependencyHealth
from voicenote.settings import KafkaSettings

log = logging.getLogger(__name__)

Partition = tuple[str, int]  # (topic, partition); Faust's TP is such a tuple

# EX_TEMPFAIL: the worker stopped itself because it made no progress; starting it again is the remedy.
STALL_EXIT_CODE = 75
# EX_PROTOCOL: the broker lost data under the worker (a memory:// broker restarted, a topic re-created); its
# consumer and producer hold positions and ids the broker no longer knows, and a new process starts clean.
DATA_LOST_EXIT_CODE = 76
WAITING_ON = "progress"  # the key under /readyz's waiting_on


@dataclass(frozen=True)
class Offsets:
    """One partition as sampled: the group's committed offset (the next record to process) and the end."""

    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


class ProgressWatch:
    """Stalled: some partition has lag and no partition's committed offset moved for ``stall_seconds``."""

    def __init__(self, stall_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_seconds = stall_seconds
        self._clock = clock
        self._since = clock()  # the last progress seen: an offset moving, nothing behind, or the start
        self._last: dict[Partition, Offsets] = {}
        self.sampled_at: float | None = None

    def observe(self, offsets: Mapping[Partition, Offsets]) -> None:
        """A sample of every watched partition (the whole set: partitions left out are no longer watched)."""
        now = self._clock()
        moved = any(p in self._last and o.committed > self._last[p].committed for p, o in offsets.items())
        if moved or not any(o.lag for o in offsets.values()):
            self._since = now
        self._last = dict(offsets)
        self.sampled_at = now

    @property
    def behind(self) -> dict[Partition, int]:
        """Lag of each partition that had some at the last sample."""
        return {p: o.lag for p, o in sorted(self._last.items()) if o.lag}

    def seconds_since_progress(self) -> float:
        """0 while nothing is behind; else the time since an offset last moved (or since lag appeared)."""
        return 0.0 if not self.behind else max(0.0, self._clock() - self._since)

    @property
    def progressed_at(self) -> float:
        return self._since

    @property
    def stalled(self) -> bool:
        return bool(self.behind) and self.seconds_since_progress() >= self.stall_seconds

    def describe(self, limit: int = 6) -> str:
        behind = self.behind
        shown = ", ".join(f"{t}[{p}]: {lag}" for (t, p), lag in sorted(behind.items(), key=lambda kv: -kv[1])[:limit])
        more = f", {len(behind) - limit} more" if len(behind) > limit else ""
        return (f"no committed offset moved for {self.seconds_since_progress():.1f}s while {len(behind)} partition(s) "
                f"are {sum(behind.values())} record(s) behind ({shown}{more})")


class DataLossWatch:
    """The broker lost data: a partition's committed offset or end reads lower than it ever read before, or a topic's
    id changed (:meth:`observe_ids`).

    Both only move forward while the broker keeps its data (committed offsets are monotonic; an end grows with
    every append). A ``memory://`` broker restarted (or a topic deleted and re-created) answers with empty
    partitions and no committed offsets: the end drops, and the committed offset reads as the low watermark.
    Each is compared with itself only (Tansu's listed end counts batches, not records, so it is never compared
    with a committed offset). Fed the broker's answers, never the worker's own fetch positions (those are what
    goes stale).
    """

    def __init__(self) -> None:
        self._high: dict[Partition, Offsets] = {}
        self._ids: dict[str, str] = {}

    def observe_ids(self, ids: Mapping[str, str]) -> dict[str, tuple[str, str]]:
        """The topics whose id changed since first seen (deleted and created again: a ``memory://`` broker restarted
        and the topics re-created). Caught even where the offsets hide it: a consumer that committed its old offsets
        to the new broker, and an end grown past the old one (a producer's held records) before the first read."""
        changed = {t: (self._ids[t], i) for t, i in ids.items() if t in self._ids and self._ids[t] != i}
        self._ids.update(ids)
        return changed

    def observe(self, offsets: Mapping[Partition, Offsets]) -> dict[Partition, tuple[Offsets, Offsets]]:
        """The partitions that went backwards in this sample: (the highest seen before, now)."""
        went_back = {}
        for partition, now in offsets.items():
            seen = self._high.get(partition)
            if seen is None:
                self._high[partition] = now
                continue
            if now.committed < seen.committed or now.end < seen.end:
                went_back[partition] = (seen, now)
            self._high[partition] = Offsets(max(seen.committed, now.committed), max(seen.end, now.end))
        return went_back

    @staticmethod
    def describe(went_back: Mapping[Partition, tuple[Offsets, Offsets]], limit: int = 6) -> str:
        shown = ", ".join(f"{t}[{p}] committed {was.committed}->{now.committed}, end {was.end}->{now.end}"
                          for (t, p), (was, now) in sorted(went_back.items())[:limit])
        more = f", {len(went_back) - limit} more" if len(went_back) > limit else ""
        return f"{len(went_back)} partition(s) went backwards ({shown}{more})"


class GroupOffsets:
    """Committed offsets of ``group`` and partition ends, read without joining the group (blocking calls)."""

    def __init__(self, settings: KafkaSettings, group: str, timeout: float = 5.0) -> None:
        self.group = group
        self._timeout = timeout
        self._lock = threading.Lock()  # a read in a worker thread and close() never overlap
        self._closed = False
        # log_level 2: the worker's own clients already log a lost broker; this reader stays quiet.
        self._consumer = new_consumer(settings, group, {"enable.auto.commit": False, "log_level": 2})
        self._settings = settings
        self._admin: Any = None  # made at the first topic_ids call

    def partitions_of(self, topics: Sequence[str]) -> list[Partition]:
        """Every partition of ``topics`` (for a worker that holds none); raises KafkaException."""
        with self._lock:
            found = []
            for topic in topics:
                meta = self._consumer.list_topics(topic, timeout=self._timeout).topics.get(topic)
                if meta is None or meta.error is not None:
                    raise KafkaException(f"no metadata for topic {topic}: {meta.error if meta else 'unknown topic'}")
                found += [(topic, p) for p in sorted(meta.partitions)]
            return found

    def read(self, partitions: Collection[Partition]) -> dict[Partition, Offsets]:
        """Committed offset (the low watermark where none is committed yet) and end of each; raises
        KafkaException at the first call the broker does not answer."""
        if not partitions:
            return {}
        with self._lock:
            if self._closed:
                raise KafkaException(f"offset reader of {self.group} is closed")
            committed = self._consumer.committed([TopicPartition(t, p) for t, p in sorted(partitions)], timeout=self._timeout)
            positions = {}
            for tp in committed:
                if tp.error is not None:
                    raise KafkaException(tp.error)
                positions[(tp.topic, tp.partition)] = tp.offset
            ends = list_offsets(self._consumer, positions, "latest", self._timeout)
            starts = list_offsets(self._consumer, [tp for tp, at in positions.items() if at < 0], "earliest", self._timeout)
            return {tp: Offsets(at if at >= 0 else starts[tp], ends[tp]) for tp, at in positions.items()}

    def topic_ids(self, topics: Collection[str]) -> dict[str, str]:
        """Each topic's id (a metadata request through an admin client; a topic re-created gets a new one); raises
        KafkaException when the broker does not answer."""
        if not topics:
            return {}
        with self._lock:
            if self._closed:
                raise KafkaException(f"offset reader of {self.group} is closed")
            if self._admin is None:
                self._admin = admin_client(self._settings)
            described = self._admin.describe_topics(TopicCollection(sorted(topics)), request_timeout=self._timeout)
            return {topic: str(future.result().topic_id) for topic, future in described.items()}

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._consumer.close()


def exit_stalled(code: int = STALL_EXIT_CODE) -> None:
    """Leave now: the consumer is what is stuck, so a drain (which commits through it) could hang too.
    What was not committed is redelivered to the next owner."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(code)


class ProgressMonitor:
    """One round every ``interval``: read the group's offsets, feed the watch, report, exit past the bound.

    ``assigned`` answers the partitions to watch: the worker's assignment less what its role holds back on
    purpose, or None when the worker holds no partition (then every partition of ``topics`` is watched).
    """

    def __init__(self, *, group: str, reader: Any, watch: ProgressWatch, health: DependencyHealth,
                 exit_seconds: float, assigned: Callable[[], Collection[Partition] | None], topics: Sequence[str],
                 gauge: Any = None, known_ends: Callable[[Collection[Partition]], Mapping[Partition, int]] | None = None,
                 leave: Callable[[], None] = exit_stalled,
                 record_loss: Callable[[int], Awaitable[Any]] | None = None,
                 leave_lost: Callable[[], None] | None = None, wall_clock: Callable[[], float] = time.time) -> None:
        self.group, self.watch, self._reader, self._health = group, watch, reader, health
        self._exit_seconds, self._assigned, self._topics = exit_seconds, assigned, list(topics)
        self._gauge, self._known_ends, self._leave = gauge, known_ends, leave
        self.lost = DataLossWatch()
        self._record_loss, self._wall_clock = record_loss, wall_clock
        self._leave_lost = leave_lost or exit_data_lost
        self.read_failed: str | None = None  # why the last read failed (the broker not answering); None: it worked
        self._read_at: float | None = None  # monotonic time of the last read the broker answered

    def may_rest(self, idle: bool, rest_seconds: float | None, now: float | None = None) -> bool:
        """Whether a round may skip the broker: the worker has fetched no record for a while (``idle``), its last
        read answered and found nothing behind, and it is younger than ``rest_seconds`` (None: never skip).
        An idle stack's offset reads were most of what its broker did (issue 24); the price is that a stall
        starting while idle is seen up to ``rest_seconds`` later."""
        if not idle or rest_seconds is None or self._read_at is None or self.read_failed is not None or self.watch.behind:
            return False
        return (time.monotonic() if now is None else now) - self._read_at < rest_seconds

    async def check(self) -> None:
        """One round; a read the broker does not answer leaves the watch as it was (BrokerWatch reports the broker)."""
        assigned = self._assigned()  # None: the worker holds no partition at all
        try:
            if assigned is None:
                watched = set(await asyncio.to_thread(self._reader.partitions_of, self._topics))
            else:
                watched = {(str(t), int(p)) for t, p in assigned}
            offsets = await asyncio.to_thread(self._reader.read, watched)
        except KafkaException as exc:
            if self.read_failed is None:
                log.info("progress of group %s not read (the broker is not answering?): %s", self.group, exc)
            self.read_failed = str(exc)
        else:
            self.read_failed = None
            self._read_at = time.monotonic()
            went_back = self.lost.observe(offsets)  # the broker's own answers, before the worker's fetched ends
            recreated = self.lost.observe_ids(await self._topic_ids({t for t, _ in watched}))
            if went_back or recreated:
                await self.data_lost(went_back, recreated)
                return
            if self._known_ends is not None:
                # The worker's own fetches know record-counted ends (Tansu's ListOffsets counts batches).
                for partition, end in self._known_ends(offsets).items():
                    if partition in offsets and end > offsets[partition].end:
                        offsets[partition] = Offsets(offsets[partition].committed, end)
            self.watch.observe(offsets)
        self.report()

    async def prime(self) -> bool:
        """Read the ids of the worker's topics once at start, before its consumer has fetched anything, so that a broker
        restarted empty before the first round is still told apart; False (try again) while the broker does not answer.
        Seen in make bench-faults: a worker started 3 s before the broker was killed had no sample from it to compare."""
        ids = await self._topic_ids(set(self._topics))
        self.lost.observe_ids(ids)
        return bool(ids)

    async def _topic_ids(self, topics: Collection[str]) -> dict[str, str]:
        """The topics' ids, or none this round where the broker does not answer (the offsets were read just before)."""
        try:
            return await asyncio.to_thread(self._reader.topic_ids, topics)
        except KafkaException as exc:
            log.info("topic ids of group %s not read: %s", self.group, exc)
            return {}

    async def data_lost(self, went_back: Mapping[Partition, tuple[Offsets, Offsets]],
                        recreated: Mapping[str, tuple[str, str]] | None = None) -> None:
        """The broker lost data under this worker: say so, record when (the completion worker ends the jobs whose
        requests went with it as ``broker_data_lost``, stream_workers/completion/watchdog.py), and exit with
        :data:`DATA_LOST_EXIT_CODE`: the consumer's positions and the producer's id belong to the broker that was."""
        log.error("group %s: the broker lost data (restarted without its storage, or topics re-created): %s; "
                  "exiting with code %d so that the worker is started again with a new consumer and producer",
                  self.group, "; ".join([*([DataLossWatch.describe(went_back)] if went_back else []),
                                         *(f"topic {t} re-created (id {was} -> {now})" for t, (was, now) in sorted((recreated or {}).items()))]),
                  DATA_LOST_EXIT_CODE)
        if self._record_loss is not None:
            await self._record_loss(int(self._wall_clock() * 1000))
        self._leave_lost()

    def report(self) -> None:
        watch = self.watch
        seconds = watch.seconds_since_progress()
        if self._gauge is not None:
            self._gauge.set(seconds)
        if not watch.stalled:
            if WAITING_ON in self._health.waiting:
                log.info("group %s progresses again", self.group)
            self._health.recovered(WAITING_ON)
            return
        if WAITING_ON not in self._health.waiting:
            log.warning("group %s: %s", self.group, watch.describe())
        self._health.failing(WAITING_ON, f"group {self.group}: {watch.describe()}", since=watch.progressed_at)
        others = set(self._health.waiting) - {WAITING_ON}
        if seconds >= self._exit_seconds and self.read_failed is None and not others:
            behind = watch.behind
            log.error("group %s made no progress for %.0fs (bound %.0fs) on %d partition(s) %s, %d record(s) behind; "
                      "exiting with code %d so that the worker is started again with a new consumer",
                      self.group, seconds, self._exit_seconds, len(behind),
                      ", ".join(f"{t}[{p}]" for t, p in behind), sum(behind.values()), STALL_EXIT_CODE)
            self._leave()

    async def run(self, interval: float, rest_seconds: float | None = None, idle: Callable[[], bool] = lambda: False) -> None:
        """A round every ``interval``; one that :meth:`may_rest` (``idle`` says the worker gets no records) only reports."""
        while True:
            if self.may_rest(idle(), rest_seconds):
                self.report()
            else:
                await self.check()
            await asyncio.sleep(interval)

    def close(self) -> None:
        self._reader.close()


def faust_assignment(app: Any) -> set[Partition] | None:
    """A Faust worker's assigned partitions (public Faust API); None while it holds none or has not started."""
    try:
        assigned = app.consumer.assignment()
    except ConsumerNotStarted:
        return None
    return {(tp.topic, tp.partition) for tp in assigned} or None


def exit_data_lost() -> None:
    exit_stalled(DATA_LOST_EXIT_CODE)


def faust_fetched_ends(app: Any, partitions: Collection[Partition]) -> dict[Partition, int]:
    """The high watermark each partition had in the worker's last fetch answer for it, where there was one."""
    consumer, assigned = app.consumer, app.consumer.assignment()
    ends = {}
    for topic, partition in partitions:
        tp = TP(topic, partition)
        if tp not in assigned:
            continue
        try:
            end = consumer.highwater(tp)
        except (AssertionError, IllegalStateError):
            continue  # revoked since assignment() answered (aiokafka asserts the partition is assigned)
        if end is not None:
            ends[(topic, partition)] = end
    return ends
