"""The result cache: an identical earlier request (text, voice, format, speed, sampling parameters,
engine and model version) answers with its stored audio, without the engine.

Entries are recorded by the storage step once the audio is uploaded; the synthesis side looks them up
before the engine. An entry lives in Redis for ``cache.ttl_seconds``, kept below the storage lifecycle
so a hit never points at audio that has already expired.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

# CACHE_REGISTRY is re-exported: app.py renders it from here.
from stream_workers.runtime.metrics import CACHE_HIT_RATIO, CACHE_LOOKUPS, CACHE_REGISTRY  # noqa: F401
from voicenote.errors import ResultCacheError
from voicenote.jobstore import redis_client
from voicenote.settings import RedisSettings

# The request fields that change the audio. Anything else (job id, webhook, priority) does not.
_KEYED_FIELDS = ("text", "voice", "format", "speed", "temperature", "top_p", "repetition_penalty", "seed", "instructions")


def cache_key(request: Mapping[str, Any], engine: str, model_version: str) -> str:
    """A stable digest of everything that determines the audio of ``request``."""
    material = {name: request.get(name) for name in _KEYED_FIELDS}
    material.update(engine=engine, model_version=model_version)
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class CachedAudio:
    """Where the audio of an earlier identical request is stored, in the requested format."""

    audio_key: str
    content_type: str
    size_bytes: int
    sample_rate: int
    duration_ms: int
    source_job_id: str


class ResultCache:
    def __init__(self, client: aioredis.Redis, key_prefix: str, ttl_seconds: int) -> None:
        self._redis = client
        self._prefix = f"{key_prefix}cache:"
        self._ttl = ttl_seconds
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_url(cls, url: str, key_prefix: str, ttl_seconds: int) -> ResultCache:
        return cls(aioredis.Redis.from_url(url, decode_responses=True), key_prefix, ttl_seconds)

    @classmethod
    def from_settings(cls, settings: RedisSettings, ttl_seconds: int) -> ResultCache:
        """On a waiting pool sized from ``settings`` (voicenote.jobstore.redis_client), as the workers build it."""
        return cls(redis_client(settings), settings.key_prefix, ttl_seconds)

    async def lookup(self, key: str) -> CachedAudio | None:
        """The cached audio for ``key``, counting a hit or a miss."""
        return (await self.lookup_many([key]))[0]

    async def lookup_many(self, keys: Sequence[str]) -> list[CachedAudio | None]:
        """:meth:`lookup` for several keys in one round trip (MGET)."""
        if not keys:
            return []
        try:
            raws = await self._redis.mget([self._prefix + key for key in keys])
        except RedisError as exc:
            raise ResultCacheError(f"cannot read the result cache: {exc}") from exc
        for raw in raws:
            self._count(hit=raw is not None)
        return [CachedAudio(**json.loads(raw)) if raw is not None else None for raw in raws]

    def _count(self, *, hit: bool) -> None:
        CACHE_LOOKUPS.labels("hit" if hit else "miss").inc()
        self.hits += hit
        self.misses += not hit
        CACHE_HIT_RATIO.set(self.hit_ratio)

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    async def forget_stale(self, key: str) -> None:
        """Drop an entry whose audio is gone from storage (expired, deleted, another store): a miss after all."""
        CACHE_LOOKUPS.labels("stale").inc()  # counted as a hit by lookup(); the ratio below is corrected
        self.hits -= 1
        self.misses += 1
        CACHE_HIT_RATIO.set(self.hit_ratio)
        try:
            await self._redis.delete(self._prefix + key)
        except RedisError as exc:
            raise ResultCacheError(f"cannot write the result cache: {exc}") from exc

    async def record(self, key: str, audio: CachedAudio) -> None:
        await self.record_many([(key, audio)])

    async def record_many(self, entries: Sequence[tuple[str, CachedAudio]]) -> None:
        """Record several entries in one pipelined round trip."""
        if not entries:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, audio in entries:
                    pipe.set(self._prefix + key, json.dumps(asdict(audio)), ex=self._ttl)
                await pipe.execute()
        except RedisError as exc:
            raise ResultCacheError(f"cannot write the result cache: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()

