"""When to try a webhook again: exponential backoff with jitter, and which retry topic holds it."""

from __future__ import annotations

import random
from collections.abc import Sequence


def retry_delay(retry: int, *, base: float, cap: float, jitter: float, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``retry`` (1 = the first retry): base * 2^(retry-1), capped, minus up to
    ``jitter`` of itself so that receivers that failed together are not all retried together."""
    if retry < 1:
        raise ValueError("retry numbers start at 1")
    delay = min(cap, base * 2 ** (retry - 1))
    return delay * (1 - jitter * (rng or random).random())


def scheduled_delay(retry: int, *, schedule: Sequence[float], base: float, cap: float, jitter: float,
                    rng: random.Random | None = None) -> float:
    """Seconds before retry number ``retry``: the schedule's entry (its last one past its end), less up
    to ``jitter`` of itself; with an empty schedule, :func:`retry_delay`'s exponential backoff."""
    if not schedule:
        return retry_delay(retry, base=base, cap=cap, jitter=jitter, rng=rng)
    if retry < 1:
        raise ValueError("retry numbers start at 1")
    delay = schedule[min(retry, len(schedule)) - 1]
    return delay * (1 - jitter * (rng or random).random())


def retry_tier(retry: int, tiers: int) -> int:
    """Index of the retry topic for retry number ``retry``: one topic per retry, the last one shared.

    Records in one topic then have (nearly) equal delays, so the head of a partition is always the
    next one due and pausing the partition until then holds nothing back.
    """
    if tiers < 1:
        raise ValueError("at least one retry topic is needed")
    return min(retry, tiers) - 1
