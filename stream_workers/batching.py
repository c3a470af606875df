"""Batch formation: up to ``max_batch`` items within ``window`` seconds of the first one, similar
lengths together.

:func:`pick_batch` is the pure policy; :class:`Batcher` applies it to items arriving on the event
loop. The window is counted from the arrival of the oldest waiting item, not restarted per wait (as
Faust's ``take_events`` does), so no item waits longer than the window for its batch to close.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPolicy:
    max_batch: int = 8
    window: float = 0.1  # seconds from the first item of the batch
    # How many of the oldest waiting items a batch is chosen from. Bounds the cost of choosing (a sort)
    # when a backlog piles up, and how far ahead of its turn a short item can jump.
    lookahead: int = 64

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self.window < 0:
            raise ValueError("window must not be negative")
        if self.lookahead < self.max_batch:
            raise ValueError("lookahead must be at least max_batch")


@dataclass
class Pending(Generic[T]):
    """An item waiting for a batch: its cost measure (``size``, e.g. characters) and arrival time."""

    item: T
    size: int
    arrived: float = field(default_factory=time.monotonic)


def pick_batch(pool: Sequence[Pending[T]], max_batch: int) -> list[int]:
    """Indexes into ``pool`` (oldest first) of the next batch.

    The oldest item is always in it, so nothing starves. When more than ``max_batch`` items wait, the
    rest are the ones closest to it in size: of the runs of ``max_batch`` consecutive items in size
    order that contain the oldest, the one with the smallest spread of sizes, which is what padding
    to the longest item wastes.
    """
    if not pool:
        return []
    if len(pool) <= max_batch:
        return list(range(len(pool)))
    oldest = min(range(len(pool)), key=lambda i: pool[i].arrived)
    order = sorted(range(len(pool)), key=lambda i: (pool[i].size, pool[i].arrived))
    pos = order.index(oldest)
    best_start, best_spread = 0, None
    for start in range(max(0, pos - max_batch + 1), min(pos, len(order) - max_batch) + 1):
        run = order[start : start + max_batch]
        spread = pool[run[-1]].size - pool[run[0]].size
        if best_spread is None or spread < best_spread:
            best_start, best_spread = start, spread
    chosen = order[best_start : best_start + max_batch]
    return sorted(chosen, key=lambda i: pool[i].arrived)


def padding_waste(sizes: Sequence[int]) -> float:
    """Fraction of a padded batch that is padding: 1 - sum(sizes) / (len * max(sizes))."""
    if not sizes or max(sizes) == 0:
        return 0.0
    return 1.0 - sum(sizes) / (len(sizes) * max(sizes))


class Batcher(Generic[T]):
    """Collects items on the event loop and hands out batches by :func:`pick_batch`, chosen from the
    ``policy.lookahead`` oldest. The pool is kept in arrival order, so its head is the oldest item."""

    def __init__(self, policy: BatchPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._pool: list[Pending[T]] = []
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._pool)

    def add(self, item: T, size: int) -> None:
        self._pool.append(Pending(item, size, self._clock()))
        self._changed.set()

    def take_all(self) -> list[T]:
        """Every waiting item, leaving the pool empty (shutdown)."""
        items = [p.item for p in self._pool]
        self._pool.clear()
        return items

    def remove(self, keep: Callable[[T], bool]) -> list[T]:
        """Drop the waiting items for which ``keep`` is false; returns them."""
        dropped = [p.item for p in self._pool if not keep(p.item)]
        self._pool = [p for p in self._pool if keep(p.item)]
        return dropped

    async def next_batch(self) -> tuple[list[T], float]:
        """The next batch and how long its oldest item waited for it (seconds).

        Returns as soon as ``max_batch`` items wait, or when the window of the oldest one closes.
        """
        while True:
            if self._pool:
                oldest = self._pool[0].arrived
                remaining = oldest + self.policy.window - self._clock()
                if len(self._pool) >= self.policy.max_batch or remaining <= 0:
                    return self._cut(oldest)
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    pass
            else:
                self._changed.clear()
                await self._changed.wait()

    def _cut(self, oldest: float) -> tuple[list[T], float]:
        chosen = pick_batch(self._pool[: self.policy.lookahead], self.policy.max_batch)
        batch = [self._pool[i].item for i in chosen]
        taken = set(chosen)
        self._pool = [p for i, p in enumerate(self._pool) if i not in taken]
        return batch, max(0.0, self._clock() - oldest)
