"""Admission: which waiting items go to the engine next, and when.

:func:`pick_batch` (padding) and :func:`pick_admission` (priority lanes) are the pure policy;
:class:`Batcher` applies them to items arriving on the event loop.

When: a group closes when ``max_batch`` items wait (or as many as the engine has free slots), when the
window of the oldest waiting item closes, or at once when the engine is idle. The window is counted
from the arrival of the oldest waiting item, not restarted per wait (as Faust's ``take_events`` does),
so no item waits longer than the window; it only bounds how long admission waits to fill a group while
the engine is busy, since an idle engine gains nothing from waiting.

Which: interactive items (a caller is waiting) before bulk ones when slots are scarce; a bulk item
ranks as if it arrived ``bulk_delay`` seconds late, so it is passed over only by interactive items that
arrived before that, and cannot starve. Among items of one standing, similar lengths go together, so
padding to the longest item wastes little.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from stream_workers.engine.batches import pick_batch  # the engine's padding policy, shared with the slot adapter

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPolicy:
    max_batch: int = 8
    window: float = 0.1  # seconds from the first item of the batch
    # How many of the oldest waiting items of each lane a batch is chosen from. Bounds the cost of
    # choosing (a sort) when a backlog piles up, and how far ahead of its turn a short item can jump.
    lookahead: int = 64
    # How long a bulk item yields to interactive ones: it ranks as an interactive item arriving this late.
    bulk_delay: float = 1.0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self.window < 0:
            raise ValueError("window must not be negative")
        if self.lookahead < self.max_batch:
            raise ValueError("lookahead must be at least max_batch")
        if self.bulk_delay < 0:
            raise ValueError("bulk_delay must not be negative")


@dataclass
class Pending(Generic[T]):
    """An item waiting for a batch: its cost measure (``size``, e.g. characters), arrival time and lane."""

    item: T
    size: int
    arrived: float = field(default_factory=time.monotonic)
    interactive: bool = False

    def rank(self, bulk_delay: float) -> float:
        """When the item is due: lower goes first."""
        return self.arrived if self.interactive else self.arrived + bulk_delay


def pick_admission(pool: Sequence[Pending[T]], limit: int, now: float, bulk_delay: float) -> list[int]:
    """Indexes into ``pool`` of the items to admit into ``limit`` free slots, the most urgent first.

    Items that are due (interactive ones, and bulk ones that waited ``bulk_delay``) go before the
    others; if more are due than fit, the batch is the similar-length run around the one due longest
    (:func:`pick_batch`). Free places left over go to the rest, around the oldest of them.
    """
    if limit <= 0 or not pool:
        return []
    rank = [p.rank(bulk_delay) for p in pool]
    if len(pool) <= limit:
        return sorted(range(len(pool)), key=lambda i: rank[i])
    due = [i for i in range(len(pool)) if rank[i] <= now]
    if len(due) >= limit:
        first = min(range(len(due)), key=lambda k: rank[due[k]])
        chosen = [due[k] for k in pick_batch([pool[i] for i in due], limit, head=first)]
    else:
        rest = [i for i in range(len(pool)) if rank[i] > now]
        chosen = due + [rest[k] for k in pick_batch([pool[i] for i in rest], limit - len(due))]
    return sorted(chosen, key=lambda i: rank[i])


def padding_waste(sizes: Sequence[int]) -> float:
    """Fraction of a padded batch that is padding: 1 - sum(sizes) / (len * max(sizes))."""
    if not sizes or max(sizes) == 0:
        return 0.0
    return 1.0 - sum(sizes) / (len(sizes) * max(sizes))


class Batcher(Generic[T]):
    """Collects items on the event loop and hands out groups by :func:`pick_admission`, chosen from the
    ``policy.lookahead`` oldest of each lane. Each lane is kept in arrival order."""

    def __init__(self, policy: BatchPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._lanes: dict[bool, list[Pending[T]]] = {True: [], False: []}  # by interactive
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._lanes[True]) + len(self._lanes[False])

    def add(self, item: T, size: int, *, interactive: bool = False) -> None:
        self._lanes[interactive].append(Pending(item, size, self._clock(), interactive))
        self._changed.set()

    def wake(self) -> None:
        """Re-check the close conditions now (the engine's free slots or idleness changed)."""
        self._changed.set()

    def take_all(self) -> list[T]:
        """Every waiting item, leaving the pool empty (shutdown)."""
        items = [p.item for lane in self._lanes.values() for p in lane]
        for lane in self._lanes.values():
            lane.clear()
        return items

    def remove(self, keep: Callable[[T], bool]) -> list[T]:
        """Drop the waiting items for which ``keep`` is false; returns them."""
        dropped = [p.item for lane in self._lanes.values() for p in lane if not keep(p.item)]
        for key, lane in self._lanes.items():
            self._lanes[key] = [p for p in lane if keep(p.item)]
        return dropped

    async def next_batch(self, free: Callable[[], int] | None = None,
                         idle: Callable[[], bool] | None = None) -> tuple[list[T], float]:
        """The next group and how long the oldest item in it had waited (seconds).

        ``free``: how many the engine takes now (at most ``max_batch`` are taken); ``idle``: true when
        the engine has nothing to do, which closes the group at once. Call :meth:`wake` when either
        changes. Returns as soon as the group is full, the engine is idle, or the oldest item's window
        closes.
        """
        timed = await self.next_timed(free, idle)
        return [item for item, _ in timed], max((waited for _, waited in timed), default=0.0)

    async def next_timed(self, free: Callable[[], int] | None = None,
                         idle: Callable[[], bool] | None = None) -> list[tuple[T, float]]:
        """:meth:`next_batch`'s group, each item with its own wait: from its :meth:`add` to now, on this batcher's
        clock. Not the wait of the oldest item in the pool, which may be in another lane or past the lookahead,
        and older than the job of an item taken now (issue 25, defect 6)."""
        while True:
            limit = self.policy.max_batch if free is None else min(self.policy.max_batch, free())
            if len(self) and limit > 0:
                oldest = min(lane[0].arrived for lane in self._lanes.values() if lane)
                remaining = oldest + self.policy.window - self._clock()
                if len(self) >= limit or remaining <= 0 or (idle is not None and idle()):
                    return self._cut(limit)
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    pass
            else:
                self._changed.clear()
                await self._changed.wait()

    def _cut(self, limit: int) -> list[tuple[T, float]]:
        look = self.policy.lookahead
        candidates = self._lanes[True][:look] + self._lanes[False][:look]
        now = self._clock()
        chosen = pick_admission(candidates, limit, now, self.policy.bulk_delay)
        taken = {id(candidates[i]) for i in chosen}
        for key, lane in self._lanes.items():
            self._lanes[key] = [p for p in lane if id(p) not in taken]
        return [(candidates[i].item, max(0.0, now - candidates[i].arrived)) for i in chosen]
