"""Groups of a stream's events, gathered without a timer running while the stream is idle.

Faust's ``Stream.take_events(max_, within)`` wakes every ``within`` seconds whether or not anything came: the
completion worker's two agents, grouping within 10 ms, woke its event loop 200 times a second and made
it the costliest process of an idle stack (5% of a core; issue 24). :func:`event_groups` waits for a first
event with no timeout, then up to ``within`` for more (at most ``max_size``), so an idle worker sleeps.

:func:`acked_groups` runs it over a ``noack`` copy of a Faust stream and acknowledges each group once the
caller asks for the next one (its handling done), as take_events did, so a group that fails is redelivered whole.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import faust

E = TypeVar("E")


async def event_groups(events: AsyncIterator[E], max_size: int, within: float) -> AsyncIterator[list[E]]:
    """Lists of up to ``max_size`` events from ``events``: each starts with the next event to arrive (however long
    that takes) and holds what else arrives within ``within`` seconds of it. Ends when ``events`` ends; an error
    of ``events`` is raised here, after the events read before it were yielded."""
    if max_size < 1 or within < 0:
        raise ValueError(f"max_size must be >= 1 and within >= 0 (got {max_size}, {within})")
    loop = asyncio.get_running_loop()
    # Read-ahead is one group: the stream's own buffer holds the rest, and events not yet taken are few at a stop.
    queue: asyncio.Queue[E] = asyncio.Queue(maxsize=max_size)
    arrived = asyncio.Event()

    async def pump() -> None:
        async for event in events:
            await queue.put(event)
            arrived.set()

    reader = asyncio.create_task(pump(), name="event-groups-reader")
    try:
        while True:
            if queue.empty():
                if reader.done():
                    reader.result()  # raises what ended the stream, if it failed
                    return
                arrived.clear()
                waiting = asyncio.ensure_future(arrived.wait())
                try:
                    await asyncio.wait({waiting, reader}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiting.cancel()
                continue
            group = [queue.get_nowait()]
            deadline = loop.time() + within
            while len(group) < max_size:
                while len(group) < max_size and not queue.empty():
                    group.append(queue.get_nowait())
                remaining = deadline - loop.time()
                if len(group) >= max_size or remaining <= 0 or reader.done():
                    break
                arrived.clear()
                if queue.empty():
                    try:
                        await asyncio.wait_for(arrived.wait(), remaining)
                    except TimeoutError:
                        pass
            yield group
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


async def acked_groups(stream: faust.Stream[Any], max_size: int, within: float) -> AsyncIterator[list[Any]]:
    """:func:`event_groups` of an agent's ``stream``; each group's events are acknowledged when the caller comes back
    for the next group, so only a group it handled without raising is ever committed."""
    manual = stream.noack()
    async for events in event_groups(manual.events(), max_size, within):
        yield events
        for event in events:
            await manual.ack(event)
