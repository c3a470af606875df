"""Outages waited out: the workers' Redis and storage calls retry with backoff instead of raising.

A worker that raised on the first ``JobStoreError`` took its whole process down with it (Faust's
crashing supervisor), and with it every partition it held. Wrapped in :class:`Retrying`, a call to the
job store, the result cache or the audio store that finds its dependency down waits (exponential
backoff with jitter, capped) and tries again until it answers; the agent making it simply does not move
on, so its offsets stay where they are and nothing after it is acknowledged. Every call wrapped this
way is idempotent (forward-only transitions, deterministic object keys), so trying it again is safe.

The API does not use this: an HTTP caller gets a 503 with Retry-After at once instead of a hanging
request. :class:`DependencyHealth` records what is being waited on, for the worker's readiness.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voicenote.errors import DependencyUnavailable, PublishError

log = logging.getLogger(__name__)


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float = 0.2, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 = the first): base * 2^(attempt-1),
    capped at ``cap``, less up to ``jitter`` of itself so workers that failed together spread out."""
    if attempt < 1:
        raise ValueError("attempts start at 1")
    delay = min(cap, base * 2 ** min(attempt - 1, 32))
    return delay * (1 - jitter * (rng or random).random())


@dataclass
class DependencyHealth:
    """Which dependencies a process is waiting on, since when, and why: its readiness."""

    clock: Callable[[], float] = time.monotonic
    waiting: dict[str, tuple[float, str]] = field(default_factory=dict)

    def failing(self, dependency: str, error: str, since: float | None = None) -> None:
        """``dependency`` is waited on because of ``error``: since the first call, or since ``since`` (on ``clock``)."""
        if since is None:
            since = self.waiting.get(dependency, (self.clock(), ""))[0]
        self.waiting[dependency] = (since, error)

    def recovered(self, dependency: str) -> None:
        self.waiting.pop(dependency, None)

    @property
    def ready(self) -> bool:
        return not self.waiting

    def report(self) -> dict[str, Any]:
        now = self.clock()
        return {"ready": self.ready, "waiting_on": {dep: {"seconds": round(now - since, 1), "error": error}
                                                     for dep, (since, error) in sorted(self.waiting.items())}}


class Retrying:
    """A proxy whose coroutine methods retry on :class:`DependencyUnavailable` until the call succeeds.

    Errors that are not about availability (a missing object, bad data) pass through at once, as do
    Kafka publish errors (the broker's own client retries those). Plain attributes and synchronous
    methods are the wrapped object's own.
    """

    def __init__(self, inner: Any, *, health: DependencyHealth, base: float = 0.2, cap: float = 5.0,
                 rng: random.Random | None = None, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.inner = inner
        self._health = health
        self._base = base
        self._cap = cap
        self._rng = rng or random.Random()
        self._sleep = sleep

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def retried(*args: Any, **kwargs: Any) -> Any:
            attempt, dependency = 0, ""
            while True:
                try:
                    result = await attr(*args, **kwargs)
                except PublishError:
                    raise
                except DependencyUnavailable as exc:
                    attempt, dependency = attempt + 1, exc.dependency
                    self._health.failing(exc.dependency, str(exc))
                    delay = backoff_delay(attempt, base=self._base, cap=self._cap, rng=self._rng)
                    # Loud at first and then every so often, not on every try of a long outage.
                    level = logging.WARNING if attempt == 1 or attempt % 20 == 0 else logging.DEBUG
                    log.log(level, "%s unavailable (attempt %d of %s): %s; retrying in %.1fs",
                            exc.dependency, attempt, name, exc, delay)
                    await self._sleep(delay)
                    continue
                if attempt:
                    log.info("%s answers again after %d failed attempts of %s", type(self.inner).__name__, attempt, name)
                    self._health.recovered(dependency)
                return result

        return retried

