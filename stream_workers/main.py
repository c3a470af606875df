"""Worker entrypoint: ``voicenote worker synthesis|completion``."""

from __future__ import annotations

import asyncio
import logging

import faust

from schemas.codec import Codecs
from schemas.registry import HttpSchemaRegistry
from schemas.topics import build_catalog
from stream_workers.app import Role, build_app
from stream_workers.context import WorkerContext
from stream_workers.engine import build_engine
from stream_workers.result_cache import ResultCache
from voicenote.jobstore import JobStore
from voicenote.kafka import ensure_topics
from voicenote.settings import Settings
from voicenote.storage import build_store

log = logging.getLogger(__name__)


def build_context(settings: Settings, role: Role) -> WorkerContext:
    registry = HttpSchemaRegistry(settings.kafka.schema_registry_url) if settings.kafka.schema_registry_url else None
    catalog = build_catalog(
        prefix=settings.kafka.topic_prefix,
        request_partitions=settings.kafka.request_partitions,
        partitions=settings.kafka.partitions,
    )
    return WorkerContext(
        settings=settings,
        codecs=Codecs(registry),
        catalog=catalog,
        store=build_store(settings.storage),
        jobs=JobStore.from_settings(settings.redis) if role is Role.completion else None,
        cache=ResultCache.from_url(settings.redis.url, settings.redis.key_prefix, settings.cache.ttl_seconds)
        if settings.cache.enabled else None,
    )


def run_worker(settings: Settings, role: Role, loglevel: str = "INFO") -> None:
    if role is Role.webhooks:
        from stream_workers.webhooks.worker import run_webhooks

        return run_webhooks(settings)
    ctx = build_context(settings, role)
    ensure_topics(settings.kafka, ctx.catalog.all())
    engine = build_engine(settings.engine) if role is Role.synthesis else None
    if engine is not None:
        log.info("engine %s %s loaded (%d Hz)", engine.name, engine.model_version, engine.sample_rate)
    app = build_app(ctx, role, engine)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
