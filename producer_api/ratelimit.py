"""Per-caller token buckets in Redis (one Lua call per request), with an in-process fallback.

When Redis does not answer, each API process limits callers with its own buckets of the same size:
submissions keep flowing (Kafka is the source of truth) and no caller gets more than its rate times
the number of API processes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# KEYS[1]: bucket; ARGV: rate per second, burst, cost. Returns {allowed, retry_after_ms}.
# The clock is Redis's own, so every API process sees the same time.
_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local allowed, wait = 0, 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_seconds: int  # whole seconds, at least 1 when refused (the Retry-After header)


def refill(tokens: float, last: float, now: float, rate: float, burst: float) -> float:
    """Tokens in a bucket last seen at ``last`` holding ``tokens``, at time ``now`` (seconds)."""
    return min(burst, tokens + max(0.0, now - last) * rate)


def decide(tokens: float, cost: float, rate: float) -> tuple[bool, float, float]:
    """(allowed, tokens left, seconds to wait) for taking ``cost`` tokens."""
    if tokens >= cost:
        return True, tokens - cost, 0.0
    return False, tokens, (cost - tokens) / rate


class LocalBuckets:
    """The same buckets in process memory: the fallback while Redis is down."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._clock = clock or time.monotonic

    def take(self, key: str, rate: float, burst: int, cost: int) -> Decision:
        now = self._clock()
        tokens, last = self._buckets.get(key, (float(burst), now))
        ok, left, wait = decide(refill(tokens, last, now, rate, burst), cost, rate)
        self._buckets[key] = (left, now)
        return Decision(ok, 0 if ok else max(1, math.ceil(wait)))


class RateLimiter:
    def __init__(self, client: aioredis.Redis, prefix: str, on_fallback: Callable[[], None] | None = None) -> None:
        self._script = client.register_script(_BUCKET)
        self._prefix = prefix
        self._local = LocalBuckets()
        self._on_fallback = on_fallback

    async def take(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        try:
            allowed, wait_ms = await self._script(keys=[f"{self._prefix}rl:{key}"], args=[rate, burst, cost])
        except (RedisError, OSError) as exc:
            log.warning("rate limiter falling back to process-local buckets: %s", exc)
            if self._on_fallback is not None:
                self._on_fallback()
            return self._local.take(key, rate, burst, cost)
        return Decision(bool(allowed), 0 if allowed else max(1, math.ceil(int(wait_ms) / 1000)))
