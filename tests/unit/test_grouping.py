"""event_groups (stream_workers/runtime/grouping.py): groups as take_events made them, with no timer while idle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from stream_workers.runtime.grouping import event_groups


async def from_queue(queue: asyncio.Queue) -> AsyncIterator[int]:
    while (item := await queue.get()) is not None:
        if isinstance(item, Exception):
            raise item
        yield item


async def test_what_arrives_together_is_one_group_and_a_full_group_goes_at_once() -> None:
    queue: asyncio.Queue = asyncio.Queue()
    for n in range(10):
        queue.put_nowait(n)
    groups = event_groups(from_queue(queue), 4, within=5.0)
    t0 = time.monotonic()
    assert await anext(groups) == [0, 1, 2, 3]
    assert await anext(groups) == [4, 5, 6, 7]
    assert time.monotonic() - t0 < 1.0  # full groups do not wait out `within`
    queue.put_nowait(None)
    assert await anext(groups) == [8, 9]  # the rest, once the stream ends
    with pytest.raises(StopAsyncIteration):
        await anext(groups)


async def test_a_group_holds_what_comes_within_the_window_of_its_first_event() -> None:
    queue: asyncio.Queue = asyncio.Queue()
    groups = event_groups(from_queue(queue), 64, within=0.2)

    async def feed() -> None:
        queue.put_nowait(1)
        await asyncio.sleep(0.05)
        queue.put_nowait(2)
        await asyncio.sleep(0.5)
        queue.put_nowait(3)

    feeding = asyncio.create_task(feed())
    assert await anext(groups) == [1, 2]
    assert await anext(groups) == [3]
    await feeding
    await groups.aclose()


async def test_an_idle_stream_wakes_nothing_until_an_event_comes() -> None:
    queue: asyncio.Queue = asyncio.Queue()
    groups = event_groups(from_queue(queue), 64, within=0.01)
    loop = asyncio.get_running_loop()
    handles: list[float] = []
    real_call_at = loop.call_at

    def counting_call_at(when, callback, *args, **kwargs):  # type: ignore[no-untyped-def]
        handles.append(when)
        return real_call_at(when, callback, *args, **kwargs)

    waiting = asyncio.create_task(anext(groups))
    await asyncio.sleep(0.05)  # the generator is now waiting for a first event
    loop.call_at = counting_call_at  # type: ignore[method-assign]
    try:
        await asyncio.sleep(0.3)
        timers_while_idle = len(handles) - 1  # less this test's own sleep
    finally:
        loop.call_at = real_call_at  # type: ignore[method-assign]
    assert timers_while_idle == 0  # take_events(within=0.01) would have set ~30
    queue.put_nowait(7)
    assert await waiting == [7]
    await groups.aclose()


async def test_an_error_of_the_stream_comes_out_after_the_events_before_it() -> None:
    queue: asyncio.Queue = asyncio.Queue()
    queue.put_nowait(1)
    queue.put_nowait(RuntimeError("broken stream"))
    groups = event_groups(from_queue(queue), 8, within=0.05)
    assert await anext(groups) == [1]
    with pytest.raises(RuntimeError, match="broken stream"):
        await anext(groups)


def test_nonsense_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        asyncio.run(anext(event_groups(from_queue(asyncio.Queue()), 0, 0.1)))


class FakeStream:
    """What acked_groups uses of a Faust stream: noack(), events() and ack()."""

    def __init__(self, events: list[int]) -> None:
        self._events, self.acked = events, []

    def noack(self) -> FakeStream:
        return self

    async def events(self) -> AsyncIterator[int]:
        for event in self._events:
            yield event

    async def ack(self, event: int) -> bool:
        self.acked.append(event)
        return True


async def test_a_group_is_acknowledged_once_handled_and_never_if_its_handling_failed() -> None:
    from stream_workers.runtime.grouping import acked_groups

    stream = FakeStream([1, 2, 3])
    groups = acked_groups(stream, 2, within=0.05)  # type: ignore[arg-type]
    assert await anext(groups) == [1, 2]
    assert stream.acked == []  # handed over, not yet handled
    assert await anext(groups) == [3]
    assert stream.acked == [1, 2]  # the caller came back: the first group was handled
    await groups.aclose()  # the handler of [3] raised: the agent stops without coming back
    assert stream.acked == [1, 2]
