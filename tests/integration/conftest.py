"""An in-process API app on the real broker, Redis and storage, with two configured keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from producer_api.app import create_app
from producer_api.auth import hash_token
from schemas.topics import build_catalog
from voicenote.jobstore import JobStore
from voicenote.kafka import ensure_topics
from voicenote.settings import ApiKey, ApiSettings, Settings

WRITER = "vn-test-writer-token"
READER = "vn-test-reader-token"


def api_settings(settings: Settings, **api: Any) -> Settings:
    keys = [ApiKey(name="writer", sha256=hash_token(WRITER)), ApiKey(name="reader", sha256=hash_token(READER), scopes=["jobs"])]
    return settings.model_copy(update={"api": ApiSettings(**{"keys": keys, **api})})


@asynccontextmanager
async def running_api(settings: Settings, token: str | None = WRITER) -> AsyncIterator[httpx.AsyncClient]:
    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=settings.kafka.request_partitions,
                            partitions=settings.kafka.partitions)
    ensure_topics(settings.kafka, catalog.all())
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers, timeout=60) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
def api_factory(settings: Settings) -> Callable[..., Any]:
    """``async with api_factory(**api_settings) as client``: an app on this test's isolated names."""

    def factory(token: str | None = WRITER, **api: Any) -> Any:
        return running_api(api_settings(settings, **api), token)

    return factory


@pytest.fixture
async def jobs(settings: Settings) -> AsyncIterator[JobStore]:
    """A job store on this test's Redis key prefix."""
    store = JobStore.from_settings(settings.redis)
    try:
        yield store
    finally:
        await store.close()
