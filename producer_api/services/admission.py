"""Admission: the caller's rate limit, and Idempotency-Key replays (the same key and body: the same answer)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from producer_api.auth import Caller
from producer_api.errors import ApiError
from producer_api.idempotency import IdempotencyStore, fingerprint
from producer_api.metrics import ApiMetrics
from producer_api.ratelimit import RateLimiter
from voicenote.errors import JobStoreError
from voicenote.idempotency import IdempotencyMark

log = logging.getLogger(__name__)


class Admission:
    def __init__(self, *, limiter: RateLimiter, idempotency: IdempotencyStore, metrics: ApiMetrics) -> None:
        self._limiter = limiter
        self._idem = idempotency
        self._metrics = metrics

    async def charge(self, caller: Caller, cost: int = 1) -> None:
        """Take ``cost`` tokens from the caller's bucket; 429 with Retry-After when it is empty."""
        if cost > caller.burst:
            raise ApiError(429, f"this request costs {cost} tokens but the key's burst is {caller.burst}; send fewer items",
                           type_="rate_limit_error", code="rate_limit_exceeded")
        decision = await self._limiter.take(caller.rate_key, caller.rate_per_second, caller.burst, cost)
        if not decision.allowed:
            self._metrics.rate_limited.inc()
            raise ApiError(429, f"rate limit of {caller.rate_per_second:g} requests/s (burst {caller.burst}) exceeded; "
                                f"retry in {decision.retry_after_seconds}s", type_="rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": str(decision.retry_after_seconds)})

    async def once(self, caller: Caller, key: str | None, endpoint: str, body: BaseModel,
                   action: Callable[[IdempotencyMark | None], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Run ``action`` unless ``key`` already answered this body (then its answer); without a key, always run it.

        ``action`` gets the key's mark (None without a key) to put into the attributes of the request events it
        publishes (``voicenote.idempotency.mark_attributes``): the projection rebuild restores the answer from them."""
        if key is None:
            return await action(None)
        fp = fingerprint(endpoint, body.model_dump(mode="json"))
        reservation = await self._idem.reserve(caller.name, key, fp, endpoint)
        if reservation.replay is not None:
            return reservation.replay
        try:
            response = await action(reservation.mark)
        except BaseException:
            await self._idem.release(reservation)
            raise
        try:
            await self._idem.complete(reservation, fp, response)
        except JobStoreError as exc:
            log.warning("job accepted but its Idempotency-Key was not recorded: %s", exc)
        return response
