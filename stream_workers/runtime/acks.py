"""Acknowledgements released in offset order per partition.

The synthesis loop finishes requests out of order (similar lengths batch together; a drain leaves
some unfinished). Faust's consumer commits the highest contiguous acknowledged offset, except on a
partition with nothing committed yet, where it ignores a gap at the head of the acknowledged offsets
and would commit past requests still in flight (faust-streaming ``Consumer._new_offset``). Handing
Faust the acknowledgements in order per partition keeps the commit behind every unfinished request.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

H = TypeVar("H")


class InOrderAcks(Generic[H]):
    def __init__(self, partition_of: Callable[[H], Hashable]) -> None:
        self._partition_of = partition_of
        self._queues: dict[Hashable, deque[list]] = {}
        self._entries: dict[int, list] = {}

    def register(self, handle: H) -> None:
        """Call for each handle as it is read, in the order read."""
        entry = [handle, False]
        self._queues.setdefault(self._partition_of(handle), deque()).append(entry)
        self._entries[id(handle)] = entry

    def done(self, handle: H) -> list[H]:
        """Mark ``handle`` finished; returns the handles now acknowledgeable, in order."""
        entry = self._entries.pop(id(handle))
        entry[1] = True
        queue = self._queues[self._partition_of(handle)]
        released = []
        while queue and queue[0][1]:
            released.append(queue.popleft()[0])
        return released
