"""Worker entrypoint: ``voicenote worker synthesis|completion``."""

from __future__ import annotations

import logging
from typing import Any

from schemas.codec import Codecs
from schemas.registry import HttpSchemaRegistry
from stream_workers.app import Role, build_app
from stream_workers.context import WorkerContext
from stream_workers.engine import build_engine
from stream_workers.faust_driver import DrainingWorker
from stream_workers.probes import BrokerWatch, Readiness, attach_faust_probes
from stream_workers.result_cache import ResultCache
from voicenote.jobstore import JobStore
from voicenote.kafka import ensure_topics
from voicenote.logs import logging_config
from voicenote.retry import DependencyHealth, Retrying
from voicenote.settings import Settings
from voicenote.storage import build_store
from voicenote.tracing import configure_tracing

log = logging.getLogger(__name__)


def build_context(settings: Settings, role: Role) -> WorkerContext:
    registry = HttpSchemaRegistry(settings.kafka.schema_registry_url) if settings.kafka.schema_registry_url else None
    catalog = settings.kafka.catalog()
    health = DependencyHealth()

    def retrying(inner: Any) -> Any:
        # A Redis or storage outage is waited out with the offsets held, not crashed on (voicenote/retry.py).
        return Retrying(inner, health=health, base=settings.worker.retry_base_seconds, cap=settings.worker.retry_max_seconds)

    return WorkerContext(
        settings=settings,
        codecs=Codecs(registry),
        catalog=catalog,
        store=retrying(build_store(settings.storage)),
        jobs=retrying(JobStore.from_settings(settings.redis)),  # completion: the projection; synthesis: cancel/redelivery checks
        cache=retrying(ResultCache.from_settings(settings.redis, settings.cache.ttl_seconds))
        if settings.cache.enabled else None,
        health=health,
    )


def run_worker(settings: Settings, role: Role, loglevel: str = "INFO") -> None:
    configure_tracing(f"voicenote-{role.value}", settings.tracing)
    if role is Role.webhooks:
        from stream_workers.webhooks.worker import run_webhooks

        return run_webhooks(settings)
    ctx = build_context(settings, role)
    ensure_topics(settings.kafka, ctx.catalog.all())
    engine = build_engine(settings.engine) if role is Role.synthesis else None
    if engine is not None:
        log.info("engine %s %s loaded (%d Hz)", engine.name, engine.model_version, engine.sample_rate)
    app = build_app(ctx, role, engine)
    readiness = Readiness(health=ctx.health, engine=engine)
    attach_faust_probes(app, readiness)
    BrokerWatch(settings.kafka, ctx.health, interval=settings.worker.broker_check_seconds).start()  # a daemon thread
    worker = DrainingWorker(app, grace_seconds=settings.synthesis.shutdown_grace_seconds, readiness=readiness,
                            loglevel=loglevel, quiet=True,
                            logging_config=logging_config(settings.log.format, settings.log.level))
    worker.execute_from_commandline()
