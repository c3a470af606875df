"""Idempotency keys: the same key and body give the same answer; the same key with another body, 409.

A key is reserved (``pending``) before anything is published and released if publishing fails, so a
retry after a 503 publishes afresh; once published it holds the answer for ``ttl`` seconds. Keys are
scoped to the caller, so two customers cannot collide. The record's key and value are
``voicenote/idempotency.py``'s, which the projection rebuild shares to restore answers Redis lost.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from producer_api.errors import ApiError
from voicenote.errors import JobStoreError
from voicenote.idempotency import IdempotencyMark, done_value, key_digest, pending_value, record_key

MAX_KEY_CHARS = 255


def fingerprint(endpoint: str, body: dict[str, Any]) -> str:
    """A stable hash of what was asked: the endpoint and the body with its defaults filled in."""
    canonical = json.dumps({"endpoint": endpoint, "body": body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Reservation:
    redis_key: str
    replay: dict[str, Any] | None  # the earlier answer when this key was already used with this body
    mark: IdempotencyMark | None = None  # what the request events published under this key carry of it


class IdempotencyStore:
    def __init__(self, client: aioredis.Redis, prefix: str, ttl_seconds: int) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl = ttl_seconds

    async def reserve(self, owner: str, key: str, fp: str, endpoint: str) -> Reservation:
        if not key or len(key) > MAX_KEY_CHARS:
            raise ApiError(400, f"Idempotency-Key must be 1-{MAX_KEY_CHARS} characters", param="Idempotency-Key",
                           code="invalid_idempotency_key")
        digest = key_digest(key)
        rkey = record_key(self._prefix, owner, digest)
        try:
            if await self._redis.set(rkey, pending_value(fp), nx=True, ex=self._ttl):
                return Reservation(rkey, None, IdempotencyMark(key_sha256=digest, fingerprint=fp, endpoint=endpoint))
            raw = await self._redis.get(rkey)
        except (RedisError, OSError) as exc:
            raise JobStoreError(f"cannot check Idempotency-Key: {exc}") from exc
        if raw is None:  # expired between the two calls: a fresh request
            return await self.reserve(owner, key, fp, endpoint)
        held = json.loads(raw)
        if held["fp"] != fp:
            raise ApiError(409, "this Idempotency-Key was already used with a different request body",
                           param="Idempotency-Key", code="idempotency_key_reused")
        if held["state"] != "done":
            raise ApiError(409, "a request with this Idempotency-Key is still being processed; retry shortly",
                           param="Idempotency-Key", code="idempotency_key_in_progress", headers={"Retry-After": "1"})
        return Reservation(rkey, held["response"])

    async def complete(self, reservation: Reservation, fp: str, response: dict[str, Any]) -> None:
        try:
            await self._redis.set(reservation.redis_key, done_value(fp, response), ex=self._ttl)
        except (RedisError, OSError) as exc:
            raise JobStoreError(f"cannot record Idempotency-Key: {exc}") from exc

    async def release(self, reservation: Reservation) -> None:
        """Forget a reservation whose request was not published (best effort: it also expires)."""
        try:
            await self._redis.delete(reservation.redis_key)
        except (RedisError, OSError):
            pass  # the reservation expires with its TTL; the caller already answers 503
