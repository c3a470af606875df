"""Readiness that watches progress (stream_workers/runtime/progress.py): the watch on a fake clock, and the
monitor's reports and exit with a fake offset reader (the real broker: tests/integration/test_progress_watch.py)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import pytest
from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry

from stream_workers.runtime.metrics import ProgressMetrics
from stream_workers.runtime.probes import Readiness
from stream_workers.runtime.progress import DataLossWatch, Offsets, Partition, ProgressMonitor, ProgressWatch
from voicenote.retry import DependencyHealth
from voicenote.settings import KafkaSettings, Settings, WorkerSettings

A, B = ("voicenote.requests.v1", 0), ("voicenote.requests.v1", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lag_without_an_offset_moving_for_the_bound_is_a_stall_and_a_moving_offset_clears_it() -> None:
    clock = Clock()
    watch = ProgressWatch(30, clock)
    watch.observe({A: Offsets(10, 50), B: Offsets(7, 7)})
    clock.now += 29
    watch.observe({A: Offsets(10, 60), B: Offsets(7, 7)})  # the end moves, the committed offset does not
    assert not watch.stalled and watch.seconds_since_progress() == 29
    clock.now += 1
    assert watch.stalled and watch.behind == {A: 50}
    assert "no committed offset moved for 30.0s" in watch.describe() and "voicenote.requests.v1[0]: 50" in watch.describe()

    clock.now += 5
    watch.observe({A: Offsets(11, 60), B: Offsets(7, 7)})  # one record done: progress
    assert not watch.stalled and watch.seconds_since_progress() == 0


def test_no_lag_is_never_a_stall_however_long_nothing_moves() -> None:
    clock = Clock()
    watch = ProgressWatch(30, clock)
    for _ in range(10):
        watch.observe({A: Offsets(10, 10), B: Offsets(3, 2)})  # caught up (an end below the offset reads 0 behind)
        clock.now += 60
    assert not watch.stalled and watch.seconds_since_progress() == 0
    watch.observe({})  # nothing watched
    clock.now += 600
    assert not watch.stalled


def test_caught_up_restarts_the_clock_so_new_lag_gets_the_whole_bound() -> None:
    clock = Clock()
    watch = ProgressWatch(30, clock)
    watch.observe({A: Offsets(10, 10)})
    clock.now += 500
    watch.observe({A: Offsets(10, 10)})
    clock.now += 5
    watch.observe({A: Offsets(10, 25)})  # new records arrive
    clock.now += 20
    assert not watch.stalled  # 25 s behind, not 525
    clock.now += 10
    assert watch.stalled


def test_a_newly_watched_partition_or_an_offset_going_back_is_not_progress() -> None:
    clock = Clock()
    watch = ProgressWatch(30, clock)
    watch.observe({A: Offsets(10, 50)})
    clock.now += 20
    watch.observe({A: Offsets(10, 50), B: Offsets(90, 95)})  # B joins the assignment: nothing moved
    clock.now += 10
    assert watch.stalled
    watch.observe({A: Offsets(4, 50), B: Offsets(90, 95)})  # rewound (a reset): still nothing processed
    assert watch.stalled
    watch.observe({A: Offsets(4, 50), B: Offsets(91, 95)})
    assert not watch.stalled


class FakeReader:
    """Answers what a test sets: offsets per partition, or a KafkaException (the broker away)."""

    def __init__(self, offsets: Mapping[Partition, Offsets]) -> None:
        self.offsets = dict(offsets)
        self.down = False
        self.asked: list[set[Partition]] = []
        self.topics_asked: list[list[str]] = []
        self.ids: dict[str, str] = {}  # topic -> id, where a test sets one
        self.closed = False

    def partitions_of(self, topics: Sequence[str]) -> list[Partition]:
        self.topics_asked.append(list(topics))
        return sorted(p for p in self.offsets if p[0] in topics)

    def read(self, partitions: Collection[Partition]) -> dict[Partition, Offsets]:
        if self.down:
            raise KafkaException("timed out")
        self.asked.append(set(partitions))
        return {p: self.offsets[p] for p in partitions}

    def topic_ids(self, topics: Collection[str]) -> dict[str, str]:
        return {t: self.ids[t] for t in topics if t in self.ids}

    def close(self) -> None:
        self.closed = True


def _monitor(reader: FakeReader, clock: Clock, health: DependencyHealth, exits: list[int],
             assigned: set[Partition] | None = None, **kwargs: object) -> tuple[ProgressMonitor, ProgressMetrics]:
    metrics = ProgressMetrics(CollectorRegistry())
    monitor = ProgressMonitor(group="voicenote-synthesis", reader=reader, watch=ProgressWatch(30, clock), health=health,
                              exit_seconds=300, assigned=lambda: assigned, topics=["voicenote.requests.v1"],
                              gauge=metrics.seconds_since_progress.labels("voicenote-synthesis"),
                              leave=lambda: exits.append(1), **kwargs)  # type: ignore[arg-type]
    return monitor, metrics


def _gauge(metrics: ProgressMetrics) -> float:
    value = metrics.registry.get_sample_value("voicenote_seconds_since_progress", {"group": "voicenote-synthesis"})
    assert value is not None
    return value


async def test_a_stall_makes_readyz_wait_on_progress_with_the_reason_then_ready_again() -> None:
    clock, exits = Clock(), []
    health = DependencyHealth(clock=clock)
    readiness = Readiness(started=True, health=health)
    reader = FakeReader({A: Offsets(10, 50), B: Offsets(0, 0)})
    monitor, metrics = _monitor(reader, clock, health, exits, assigned={A, B})
    await monitor.check()
    assert readiness.ready and reader.asked == [{A, B}]

    clock.now += 31
    await monitor.check()
    status, body = readiness.body()
    assert status == 503 and not readiness.ready
    waiting = health.report()["waiting_on"]["progress"]
    assert waiting["seconds"] == 31  # since progress stopped, not since the check noticed
    assert "voicenote-synthesis" in waiting["error"] and "1 partition(s) are 40 record(s) behind" in waiting["error"]
    assert _gauge(metrics) == 31

    clock.now += 5
    reader.offsets[A] = Offsets(12, 50)
    await monitor.check()
    assert readiness.ready and "progress" not in health.waiting and _gauge(metrics) == 0
    assert exits == []


async def test_past_the_longer_bound_the_worker_exits_but_not_while_the_broker_or_redis_is_away() -> None:
    clock, exits = Clock(), []
    health = DependencyHealth(clock=clock)
    reader = FakeReader({A: Offsets(10, 50)})
    monitor, _ = _monitor(reader, clock, health, exits, assigned={A})
    await monitor.check()

    clock.now += 400
    reader.down = True  # the broker does not answer: a new process would not do better
    await monitor.check()
    assert exits == [] and "progress" in health.waiting and monitor.read_failed

    reader.down = False
    health.failing("redis", "connection refused")  # a dependency being waited out: same
    await monitor.check()
    assert exits == []

    health.recovered("redis")
    await monitor.check()  # stalled 400 s > 300 s, the broker answering, nothing else waited on
    assert exits == [1]


async def test_before_the_longer_bound_the_worker_stays() -> None:
    clock, exits = Clock(), []
    health = DependencyHealth(clock=clock)
    monitor, _ = _monitor(FakeReader({A: Offsets(10, 50)}), clock, health, exits, assigned={A})
    await monitor.check()
    clock.now += 299
    await monitor.check()
    assert "progress" in health.waiting and exits == []


async def test_a_worker_holding_no_partition_watches_every_partition_of_its_topics() -> None:
    clock, exits = Clock(), []
    health = DependencyHealth(clock=clock)
    reader = FakeReader({A: Offsets(10, 50), B: Offsets(0, 0), ("other", 0): Offsets(0, 9)})
    monitor, _ = _monitor(reader, clock, health, exits, assigned=None)
    await monitor.check()
    assert reader.topics_asked == [["voicenote.requests.v1"]] and reader.asked == [{A, B}]
    clock.now += 31
    await monitor.check()
    assert "progress" in health.waiting  # the group has lag nobody moves, this worker included


async def test_every_assigned_partition_held_back_watches_none_rather_than_the_whole_topic() -> None:
    clock, exits = Clock(), []
    health = DependencyHealth(clock=clock)
    reader = FakeReader({A: Offsets(10, 50)})
    monitor, _ = _monitor(reader, clock, health, exits, assigned=set())  # assigned, all parked until due
    await monitor.check()
    clock.now += 600
    await monitor.check()
    assert reader.topics_asked == [] and health.ready and exits == []


async def test_the_workers_own_fetched_end_counts_where_the_listed_one_reads_low() -> None:
    # Tansu answers ListOffsets with a count of batches: 3 batches of 10 records read as end 3 below offset 10.
    clock, exits = Clock(), []
    health = DependencyHealth(clock=clock)
    reader = FakeReader({A: Offsets(10, 3)})
    monitor, _ = _monitor(reader, clock, health, exits, assigned={A}, known_ends=lambda partitions: {A: 30})
    await monitor.check()
    clock.now += 31
    await monitor.check()
    assert monitor.watch.behind == {A: 20} and "progress" in health.waiting


def test_the_bounds_default_from_the_session_timeout_and_must_be_ordered() -> None:
    assert Settings().progress_bounds() == (30.0, 300.0)  # 3 x 10 s session timeout; 10 x that
    s = Settings(kafka=KafkaSettings(session_timeout_ms=45_000))
    assert s.progress_bounds() == (135.0, 1350.0)
    s = Settings(worker=WorkerSettings(stall_seconds=5, stall_exit_seconds=60))
    assert s.progress_bounds() == (5, 60)
    with pytest.raises(ValueError, match="must be longer"):
        Settings(worker=WorkerSettings(stall_seconds=60, stall_exit_seconds=30))


def test_a_committed_offset_or_an_end_going_backwards_is_a_data_loss_and_growth_is_not() -> None:
    # Issue 25, defect 2: a memory:// broker restarted answers with empty partitions and no committed offsets.
    lost = DataLossWatch()
    assert lost.observe({A: Offsets(10, 50), B: Offsets(0, 0)}) == {}
    assert lost.observe({A: Offsets(40, 90), B: Offsets(0, 3)}) == {}  # progress and appends
    assert lost.observe({A: Offsets(40, 90)}) == {}  # a partition no longer watched is no loss
    went_back = lost.observe({A: Offsets(0, 2), B: Offsets(0, 3)})  # the group's offsets and the records gone
    assert went_back == {A: (Offsets(40, 90), Offsets(0, 2))}
    assert "committed 40->0, end 90->2" in DataLossWatch.describe(went_back)
    assert lost.observe({B: Offsets(0, 1)}) == {B: (Offsets(0, 3), Offsets(0, 1))}  # an end alone going back
    # The highest seen is kept: a topic re-filled to below its old end still reads as lost.
    assert lost.observe({A: Offsets(0, 60)}) == {A: (Offsets(40, 90), Offsets(0, 60))}


async def test_a_broker_that_lost_data_is_recorded_and_the_worker_exits_with_its_own_code() -> None:
    clock, exits, left, recorded = Clock(), [], [], []
    health = DependencyHealth(clock=clock)
    reader = FakeReader({A: Offsets(30, 50), B: Offsets(7, 7)})

    async def record(at_ms: int) -> None:
        recorded.append(at_ms)

    monitor, _ = _monitor(reader, clock, health, exits, assigned={A, B}, record_loss=record,
                          leave_lost=lambda: left.append(1), wall_clock=lambda: 1_700_000_000.0)
    await monitor.check()
    reader.down = True  # the broker away: nothing read, nothing concluded
    await monitor.check()
    assert (recorded, left) == ([], [])
    reader.down = False
    reader.offsets = {A: Offsets(0, 4), B: Offsets(0, 0)}  # back, empty: the group's committed offsets gone too
    await monitor.check()
    assert recorded == [1_700_000_000_000] and left == [1] and exits == []


async def test_the_workers_own_stale_fetched_end_does_not_hide_a_loss() -> None:
    # A wedged consumer keeps the high watermark of its last fetch from the old broker; only the broker's answers count.
    clock, exits, left = Clock(), [], []
    health = DependencyHealth(clock=clock)
    reader = FakeReader({A: Offsets(30, 50)})
    monitor, _ = _monitor(reader, clock, health, exits, assigned={A}, known_ends=lambda parts: {A: 50},
                          leave_lost=lambda: left.append(1))
    await monitor.check()
    reader.offsets = {A: Offsets(30, 3)}  # the consumer committed its stale offset to the new broker; the end dropped
    await monitor.check()
    assert left == [1]


async def test_a_topic_recreated_is_a_data_loss_even_where_the_offsets_hide_it() -> None:
    # Seen in make bench-faults: the consumer committed its old offsets to the restarted broker, and the API's held
    # records grew the ends past the old ones, before the watch's first read after the restart.
    clock, exits, left = Clock(), [], []
    health = DependencyHealth(clock=clock)
    reader = FakeReader({A: Offsets(30, 50)})
    reader.ids = {A[0]: "AaJR/HSzfnOPV2MYiNEQpg"}
    monitor, _ = _monitor(reader, clock, health, exits, assigned={A}, leave_lost=lambda: left.append(1))
    await monitor.check()
    reader.offsets = {A: Offsets(30, 80)}
    await monitor.check()
    assert left == []  # the same topic, grown
    reader.ids = {A[0]: "AaJR/HjncZOGoYFyr5fRmg"}  # the ids Tansu gave one topic before and after a memory:// restart
    await monitor.check()
    assert left == [1]


async def test_the_topic_ids_read_at_start_are_the_baseline_before_any_round() -> None:
    # A worker started just before the broker died has no round of offsets from that broker: the ids read at start are it.
    clock, exits, left = Clock(), [], []
    health = DependencyHealth(clock=clock)
    reader = FakeReader({A: Offsets(0, 9)})
    monitor, _ = _monitor(reader, clock, health, exits, assigned={A}, leave_lost=lambda: left.append(1))
    assert not await monitor.prime()  # the broker not answering yet (no id): tried again
    reader.ids = {A[0]: "AaJR/uRgd7CEIVvC0D23uA"}
    assert await monitor.prime() and reader.asked == []
    reader.ids = {A[0]: "AaJR/yoUc8ChCxBKVRdAtw"}  # restarted empty and re-created before the first round
    await monitor.check()
    assert left == [1]


async def test_an_idle_worker_rests_between_reads_only_while_its_last_read_found_nothing_behind() -> None:
    clock, exits = Clock(), []
    health = DependencyHealth(clock=clock)
    reader = FakeReader({A: Offsets(50, 50)})
    monitor, _ = _monitor(reader, clock, health, exits, assigned={A})
    assert not monitor.may_rest(True, 30.0, now=0.0)  # never read yet
    await monitor.check()
    import time as _time

    read_at = _time.monotonic()
    assert monitor.may_rest(True, 30.0, now=read_at + 29)
    assert not monitor.may_rest(True, 30.0, now=read_at + 31)  # the rest is over: read again
    assert not monitor.may_rest(False, 30.0, now=read_at + 1)  # records flowing: every round reads
    assert not monitor.may_rest(True, None, now=read_at + 1)  # no rest configured
    reader.offsets[A] = Offsets(50, 60)
    await monitor.check()
    assert not monitor.may_rest(True, 30.0, now=_time.monotonic())  # something behind: keep watching it
    reader.offsets[A] = Offsets(60, 60)
    reader.down = True
    await monitor.check()
    assert not monitor.may_rest(True, 30.0, now=_time.monotonic())  # the last read failed
