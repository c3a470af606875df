"""Builds the FastAPI app from settings; the lifespan owns the Kafka producer, Redis and storage."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI

from producer_api.errors import install_error_handlers
from producer_api.routes import health, jobs
from producer_api.service import JobService
from schemas.codec import Codecs
from schemas.registry import HttpSchemaRegistry
from schemas.topics import build_catalog
from voicenote.jobstore import JobStore
from voicenote.kafka import AsyncProducer
from voicenote.settings import Settings
from voicenote.storage import build_store


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = HttpSchemaRegistry(settings.kafka.schema_registry_url) if settings.kafka.schema_registry_url else None
        catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=settings.kafka.request_partitions,
                                partitions=settings.kafka.partitions)
        producer = AsyncProducer(settings.kafka)
        job_store = JobStore.from_settings(settings.redis)
        store = build_store(settings.storage)
        app.state.producer = producer
        app.state.jobs = JobService(producer, job_store, store, Codecs(registry), catalog,
                                    settings.api.public_base_url, settings.storage.presign_expiry_seconds)
        try:
            yield
        finally:
            producer.close()
            await job_store.close()
            await store.close()

    app = FastAPI(title="Voicenote", version="0.1.0", lifespan=lifespan,
                  description="Text to voice notes over Kafka. Errors use OpenAI's envelope.")
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    return app
