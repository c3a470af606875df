"""Worker entrypoint: ``voicenote worker synthesis|completion``."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from stream_workers.app import Role, build_app
from stream_workers.engine import build_engine
from stream_workers.engine.base import EngineError
from stream_workers.runtime.context import WorkerContext
from stream_workers.runtime.faust_driver import DrainingWorker
from stream_workers.runtime.probes import BrokerWatch, Readiness, attach_faust_probes, serve_probes
from stream_workers.runtime.result_cache import ResultCache
from voicenote.jobstore import JobStore
from voicenote.kafka import ensure_topics, event_codecs
from voicenote.logs import logging_config
from voicenote.retry import DependencyHealth, Retrying
from voicenote.settings import Settings
from voicenote.storage import build_store
from voicenote.tracing import configure_tracing

log = logging.getLogger(__name__)


def build_context(settings: Settings, role: Role) -> WorkerContext:
    catalog = settings.kafka.catalog()
    health = DependencyHealth()

    def retrying(inner: Any) -> Any:
        # A Redis or storage outage is waited out with the offsets held, not crashed on (voicenote/retry.py).
        return Retrying(inner, health=health, base=settings.worker.retry_base_seconds, cap=settings.worker.retry_max_seconds)

    return WorkerContext(
        settings=settings,
        codecs=event_codecs(settings.kafka),
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
    try:
        engine = build_engine(settings.engine) if role is Role.synthesis else None
    except EngineError as exc:
        if exc.code != "checkpoint_error":
            raise
        return serve_unready(settings, ctx.health, str(exc))
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


def serve_unready(settings: Settings, health: DependencyHealth, reason: str) -> None:
    """The engine's checkpoint was refused: stay up, not ready, until SIGTERM, and consume nothing.

    Exiting would only start the same refusal again (the kubelet's or ``voicenote run``'s restart), in a
    loop whose only trace is the last log lines. Staying up keeps the reason where it is looked for:
    ``/readyz`` answers 503 with ``waiting_on.engine`` saying it, ``/healthz`` 200 (restarting does not
    help: the checkpoint must be fixed, then the worker restarted). No consumer is made, so the group
    never hands this worker partitions it could not serve; they stay with the workers that can.
    """
    log.error("engine not loaded, so this worker consumes nothing and stays not ready (/readyz says why) until it is "
              "stopped; fix the checkpoint (docs/s1mini.md) and restart it: %s", reason)
    health.failing("engine", reason)
    readiness = Readiness(health=health)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        probes = await serve_probes(settings.worker.web_host, settings.worker.web_port, readiness, lambda: b"")
        try:
            await stop.wait()
        finally:
            await probes.cleanup()

    asyncio.run(main())
