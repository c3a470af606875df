"""Engine adverts: each running synthesis worker says in Redis what its engine serves.

A worker writes ``<prefix>engines:<family>`` (JSON: engine, model version, sample rate, voices, when)
at start and every ``ADVERT_INTERVAL_SECONDS``, expiring after ``ADVERT_TTL_SECONDS``, so an advert
vanishes soon after the family's last worker stops. ``GET /v1/audio/voices`` shows it beside the
configured voices: what the registry accepts, and what the running engines actually serve.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.clock import now_ms
from voicenote.errors import JobStoreError

ADVERT_INTERVAL_SECONDS = 30.0
ADVERT_TTL_SECONDS = 90


@dataclass(frozen=True)
class EngineAdvert:
    engine: str
    model_version: str
    sample_rate: int
    voices: list[str]
    seen_at: int  # epoch ms of the last advert


def advert_key(key_prefix: str, family: str) -> str:
    return f"{key_prefix}engines:{family}"


async def publish_advert(client: aioredis.Redis, key_prefix: str, family: str, *, engine: str, model_version: str,
                         sample_rate: int, voices: Sequence[str]) -> EngineAdvert:
    advert = EngineAdvert(engine, model_version, sample_rate, list(voices), now_ms())
    try:
        await client.set(advert_key(key_prefix, family), json.dumps(asdict(advert)), ex=ADVERT_TTL_SECONDS)
    except (RedisError, OSError) as exc:
        raise JobStoreError(f"cannot advertise the {family} engine: {exc}") from exc
    return advert


async def read_adverts(client: aioredis.Redis, key_prefix: str, families: Sequence[str]) -> dict[str, EngineAdvert]:
    """The live advert of each of ``families`` that has one (no worker seen lately: absent)."""
    try:
        values = await client.mget([advert_key(key_prefix, family) for family in families]) if families else []
    except (RedisError, OSError) as exc:
        raise JobStoreError(f"cannot read engine adverts: {exc}") from exc
    return {family: EngineAdvert(**json.loads(value)) for family, value in zip(families, values, strict=True) if value}
