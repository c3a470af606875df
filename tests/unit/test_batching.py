import asyncio

import pytest

from stream_workers.synthesis.batching import Batcher, BatchPolicy, Pending, padding_waste, pick_admission, pick_batch


def _pool(sizes: list[int]) -> list[Pending[int]]:
    return [Pending(i, size, arrived=float(i)) for i, size in enumerate(sizes)]


def test_everything_waiting_fits_in_one_batch() -> None:
    assert pick_batch(_pool([5, 500, 50]), 8) == [0, 1, 2]


def test_backlog_batches_similar_lengths_around_the_oldest_item() -> None:
    sizes = [100, 10, 300, 11, 99, 12, 101, 13, 98, 290]
    chosen = pick_batch(_pool(sizes), 4)
    assert 0 in chosen  # the oldest is never passed over
    assert sorted(sizes[i] for i in chosen) == [98, 99, 100, 101]


def test_the_oldest_item_is_served_even_when_it_is_an_outlier() -> None:
    sizes = [1000, 10, 11, 12, 13, 14]
    chosen = pick_batch(_pool(sizes), 3)
    assert 0 in chosen and len(chosen) == 3


def test_similar_length_batches_waste_less_padding_than_arrival_order() -> None:
    sizes = [20, 300, 22, 310, 25, 305, 21, 290, 24, 299, 23, 301, 26, 295, 27, 298]
    pool = _pool(sizes)
    by_length, fifo = [], []
    while pool:
        chosen = pick_batch(pool, 8)
        by_length.append(padding_waste([pool[i].size for i in chosen]))
        pool = [p for i, p in enumerate(pool) if i not in chosen]
    for start in range(0, len(sizes), 8):
        fifo.append(padding_waste(sizes[start : start + 8]))
    assert sum(by_length) < 0.2 * sum(fifo)


async def test_a_backlog_is_batched_from_its_oldest_items_only() -> None:
    # 8 short items wait at the back of a long backlog; with a lookahead of 16 the batch is chosen
    # from the 16 oldest, so those short ones do not jump 200 places.
    batcher: Batcher[int] = Batcher(BatchPolicy(max_batch=4, window=10.0, lookahead=16))
    sizes = [100 + i % 50 for i in range(200)] + [5] * 8
    for i, size in enumerate(sizes):
        batcher.add(i, size)
    batch, _ = await asyncio.wait_for(batcher.next_batch(), 5)
    assert 0 in batch and all(i < 16 for i in batch)
    assert len(batcher) == len(sizes) - 4
    with pytest.raises(ValueError):
        BatchPolicy(max_batch=8, lookahead=4)


def test_padding_waste() -> None:
    assert padding_waste([10, 10]) == 0
    assert padding_waste([10, 0]) == 0.5
    assert padding_waste([]) == 0


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BatchPolicy(max_batch=0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_full_batch_is_released_at_once() -> None:
    batcher: Batcher[int] = Batcher(BatchPolicy(max_batch=3, window=10.0))
    for i in range(4):
        batcher.add(i, 1)
    batch, _ = await asyncio.wait_for(batcher.next_batch(), 5)
    assert batch == [0, 1, 2]
    assert len(batcher) == 1


async def test_window_counts_from_the_first_item_not_from_the_last_wait() -> None:
    clock = FakeClock()
    batcher: Batcher[str] = Batcher(BatchPolicy(max_batch=8, window=0.1), clock=clock)
    batcher.add("first", 1)
    clock.now = 0.09
    batcher.add("late", 1)  # a restarting timer would now wait until 0.19
    clock.now = 0.1
    batch, waited = await asyncio.wait_for(batcher.next_batch(), 5)
    assert batch == ["first", "late"]
    assert waited == pytest.approx(0.1)


async def test_waits_for_the_first_item_then_closes_after_the_window() -> None:
    batcher: Batcher[int] = Batcher(BatchPolicy(max_batch=8, window=0.05))
    task = asyncio.ensure_future(batcher.next_batch())
    await asyncio.sleep(0.01)
    assert not task.done()
    batcher.add(1, 1)
    batch, waited = await asyncio.wait_for(task, 5)
    assert batch == [1]
    assert waited >= 0.05


async def test_remove_drops_matching_items() -> None:
    batcher: Batcher[int] = Batcher(BatchPolicy(max_batch=8, window=0.0))
    for i in range(5):
        batcher.add(i, 1)
    assert batcher.remove(lambda i: i % 2 == 0) == [1, 3]
    batch, _ = await batcher.next_batch()
    assert batch == [0, 2, 4]


def _lanes(spec: list[tuple[str, float, int]]) -> list[Pending[str]]:
    """(name, arrived, size); names starting with "i" are interactive."""
    return [Pending(name, size, arrived, interactive=name.startswith("i")) for name, arrived, size in spec]


def test_interactive_items_are_admitted_before_older_bulk_ones_when_slots_are_scarce() -> None:
    pool = _lanes([("b1", 0.0, 10), ("b2", 0.1, 10), ("i1", 0.2, 10), ("b3", 0.3, 10), ("i2", 0.4, 10)])
    chosen = pick_admission(pool, 2, now=0.5, bulk_delay=1.0)
    assert [pool[i].item for i in chosen] == ["i1", "i2"]
    chosen = pick_admission(pool, 3, now=0.5, bulk_delay=1.0)
    assert [pool[i].item for i in chosen] == ["i1", "i2", "b1"]  # a spare slot goes to the oldest bulk item


def test_with_room_for_everyone_all_are_admitted_most_urgent_first() -> None:
    pool = _lanes([("b1", 0.0, 10), ("i1", 0.2, 10)])
    assert [pool[i].item for i in pick_admission(pool, 8, now=0.3, bulk_delay=1.0)] == ["i1", "b1"]


def test_a_bulk_item_that_waited_bulk_delay_goes_before_later_interactive_ones() -> None:
    pool = _lanes([("b1", 0.0, 10), ("i1", 0.5, 10), ("i2", 1.5, 10), ("i3", 1.6, 10)])
    # at 1.7 b1 is due (it ranks as arriving at 1.0): after i1, before i2 and i3
    chosen = pick_admission(pool, 2, now=1.7, bulk_delay=1.0)
    assert [pool[i].item for i in chosen] == ["i1", "b1"]


def test_bulk_work_cannot_starve_under_a_steady_interactive_stream() -> None:
    # One slot a tick, two interactive arrivals a tick (more than the engine serves): the bulk item
    # still gets a slot within bulk_delay plus the interactive items that arrived before it was due.
    pool = _lanes([("bulk", 0.0, 10)])
    admitted_at = None
    for tick in range(1, 200):
        now = tick * 0.1
        pool += _lanes([(f"i{tick}a", now, 10), (f"i{tick}b", now, 10)])
        [chosen] = pick_admission(pool, 1, now=now, bulk_delay=1.0)
        if pool[chosen].item == "bulk":
            admitted_at = now
            break
        pool.pop(chosen)
    assert admitted_at is not None and admitted_at <= 3.0


def test_among_due_items_similar_lengths_go_together_around_the_most_urgent() -> None:
    pool = _lanes([("i1", 0.0, 100), ("i2", 0.1, 10), ("i3", 0.2, 98), ("i4", 0.3, 12), ("b1", 0.0, 99)])
    chosen = pick_admission(pool, 2, now=0.5, bulk_delay=1.0)
    assert sorted(pool[i].item for i in chosen) == ["i1", "i3"]


async def test_the_batcher_closes_a_group_at_once_when_the_engine_is_idle() -> None:
    clock = FakeClock()
    batcher: Batcher[str] = Batcher(BatchPolicy(max_batch=8, window=10.0), clock=clock)
    batcher.add("lone", 1)
    batch, waited = await asyncio.wait_for(batcher.next_batch(free=lambda: 8, idle=lambda: True), 5)
    assert batch == ["lone"] and waited == 0  # no window waited out


async def test_a_busy_engine_waits_for_the_window_or_its_free_slots() -> None:
    clock = FakeClock()
    batcher: Batcher[str] = Batcher(BatchPolicy(max_batch=8, window=10.0), clock=clock)
    busy = True
    batcher.add("a", 1)
    task = asyncio.ensure_future(batcher.next_batch(free=lambda: 2, idle=lambda: not busy))
    await asyncio.sleep(0)
    assert not task.done()  # busy, one of two free slots filled, window open
    batcher.add("b", 1)  # the free slots are full
    batch, _ = await asyncio.wait_for(task, 5)
    assert batch == ["a", "b"]
    batcher.add("c", 1)
    task = asyncio.ensure_future(batcher.next_batch(free=lambda: 2, idle=lambda: not busy))
    await asyncio.sleep(0)
    assert not task.done()
    busy = False
    batcher.wake()  # the engine went idle
    batch, _ = await asyncio.wait_for(task, 5)
    assert batch == ["c"]


async def test_the_batcher_looks_ahead_in_each_lane_so_an_interactive_item_behind_a_backlog_is_seen() -> None:
    batcher: Batcher[str] = Batcher(BatchPolicy(max_batch=4, window=0.0, lookahead=8))
    for i in range(100):
        batcher.add(f"b{i}", 10)
    batcher.add("urgent", 10, interactive=True)
    batch, _ = await asyncio.wait_for(batcher.next_batch(), 5)
    assert batch[0] == "urgent" and batch[1:] == ["b0", "b1", "b2"]


async def test_each_item_reports_its_own_wait_not_the_oldest_in_the_pool() -> None:
    # Issue 25, defect 6: the wait was that of the oldest item anywhere in the pool. A bulk item waiting its
    # bulk_delay made an interactive item that came 100 s later report 100 s of wait: more than its whole life.
    clock = FakeClock()
    batcher: Batcher[str] = Batcher(BatchPolicy(max_batch=4, window=0.0, bulk_delay=3600.0), clock=clock)
    batcher.add("old bulk", 1)
    clock.now = 100.0
    batcher.add("live", 1, interactive=True)
    clock.now = 100.25
    assert await asyncio.wait_for(batcher.next_timed(free=lambda: 1), 5) == [("live", 0.25)]
    clock.now = 100.5
    batcher.add("live2", 1, interactive=True)
    clock.now = 101.0
    batch, waited = await asyncio.wait_for(batcher.next_batch(free=lambda: 1), 5)
    assert batch == ["live2"] and waited == pytest.approx(0.5)  # <= its life in the batcher, 0.5 s
    # The oldest item's wait is its own when it is taken, with its group-mates' own.
    clock.now = 102.0
    batcher.add("bulk2", 1)
    clock.now = 103.0
    assert await asyncio.wait_for(batcher.next_timed(), 5) == [("old bulk", 103.0), ("bulk2", 1.0)]
