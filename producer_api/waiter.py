"""Waiting for a job's end: one pattern subscription per API process, fanned out to waiting requests.

The job store publishes on ``done:<job_id>`` when a job reaches a terminal state. A waiter registers
before the request is published and re-reads the job record after registering, so a completion that
lands in between is not missed; it also re-reads the record every ``recheck`` seconds, which covers a
subscription that dropped and came back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class CompletionWaiter:
    def __init__(self, client: aioredis.Redis, channel_prefix: str) -> None:
        self._redis = client
        self._prefix = channel_prefix
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="completion-waiter")

    async def _run(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self._prefix + "*")
                self.subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") == "pmessage":
                        self._wake(str(message["channel"])[len(self._prefix):])
            except (RedisError, OSError) as exc:
                log.warning("completion subscription lost (%s); waiters fall back to re-reading", exc)
            finally:
                self.subscribed.clear()
                await pubsub.aclose()
            self._wake_all()
            await asyncio.sleep(1.0)

    def _wake(self, job_id: str) -> None:
        for fut in self._waiting.get(job_id, ()):
            if not fut.done():
                fut.set_result(None)

    def _wake_all(self) -> None:
        for job_id in list(self._waiting):
            self._wake(job_id)

    @contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Future[None]]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job_id, set()).add(fut)
        try:
            yield fut
        finally:
            futs = self._waiting.get(job_id)
            if futs is not None:
                futs.discard(fut)
                if not futs:
                    del self._waiting[job_id]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
