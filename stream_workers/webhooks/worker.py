"""``voicenote worker webhooks``: builds the dispatcher from settings and runs it until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from stream_workers.runtime.metrics import ProgressMetrics, WebhookMetrics
from stream_workers.runtime.probes import BrokerWatch, Readiness, serve_probes
from stream_workers.runtime.progress import GroupOffsets, ProgressMonitor, ProgressWatch
from stream_workers.webhooks.delivery import WebhookSender
from stream_workers.webhooks.dispatcher import WebhookDispatcher, webhook_consumer
from stream_workers.webhooks.policy import AddressPolicy
from stream_workers.webhooks.signing import decode_secret
from voicenote.errors import ConfigError
from voicenote.jobstore import JobStore
from voicenote.kafka import AsyncProducer, ensure_topics, event_codecs
from voicenote.retry import DependencyHealth, Retrying
from voicenote.settings import Settings

log = logging.getLogger(__name__)


def build_sender(settings: Settings) -> WebhookSender:
    hooks = settings.webhooks
    if hooks.signing_secret is None:
        raise ConfigError("webhooks need a signing secret: set VOICENOTE_WEBHOOKS__SIGNING_SECRET=whsec_<base64>")
    return WebhookSender(AddressPolicy(hooks.allow_hosts), decode_secret(hooks.signing_secret.get_secret_value()),
                         timeout=hooks.timeout_seconds, max_redirects=hooks.max_redirects)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    sender = build_sender(settings)
    catalog = settings.kafka.catalog()
    # Redis down: the delivery state waits (offsets held) instead of the dispatcher exiting, and /readyz
    # says what it waits on: the readiness reads the same health the retrying store reports to.
    health = DependencyHealth()
    jobs: Any = Retrying(JobStore.from_settings(settings.redis), health=health,
                         base=settings.worker.retry_base_seconds, cap=settings.worker.retry_max_seconds)
    producer = AsyncProducer(settings.kafka, **{"delivery.timeout.ms": settings.kafka.worker_delivery_timeout_ms})
    metrics, progress, readiness = WebhookMetrics(), ProgressMetrics(), Readiness(health=health)
    probes = await serve_probes(settings.worker.web_host, settings.worker.web_port, readiness,
                                lambda: metrics.render() + progress.render())
    watch = BrokerWatch(settings.kafka, health, interval=settings.worker.broker_check_seconds).start()
    watching: asyncio.Task[None] | None = None
    monitor: ProgressMonitor | None = None
    try:
        await asyncio.to_thread(ensure_topics, settings.kafka, catalog.all())
        dispatcher = WebhookDispatcher(settings, catalog, event_codecs(settings.kafka), jobs, sender, producer, metrics=metrics,
                                       consumer=webhook_consumer(settings))
        group = dispatcher.group
        stall, leave = settings.progress_bounds()
        # Only the completion topic when nothing is assigned: the retry topics lag on purpose until records are due.
        monitor = ProgressMonitor(group=group, reader=GroupOffsets(settings.kafka, group), watch=ProgressWatch(stall),
                                  health=health, exit_seconds=leave, assigned=dispatcher.watched_partitions,
                                  topics=[catalog.completions.name], gauge=progress.seconds_since_progress.labels(group),
                                  record_loss=jobs.record_broker_data_loss)
        await monitor.prime()  # the topics' ids before the dispatcher fetches anything (stream_workers/runtime/progress.py)
        quiet_after = settings.kafka.fetch_idle_after_seconds
        watching = asyncio.create_task(monitor.run(settings.worker.progress_check_seconds, settings.worker.progress_idle_check_seconds,
                                                   idle=lambda: dispatcher.seconds_without_records() >= quiet_after),
                                       name="progress-watch")
        watching.add_done_callback(lambda task: stop.set())  # it never ends by itself: a failure stops the dispatcher
        readiness.started = True
        await dispatcher.run(stop)
        if watching.done() and not watching.cancelled() and (failure := watching.exception()) is not None:
            raise failure
    finally:
        readiness.draining = True
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        if monitor is not None:
            await asyncio.to_thread(monitor.close)
        watch.stop()
        await probes.cleanup()
        producer.close()
        await sender.close()
        await jobs.close()


def run_webhooks(settings: Settings) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("webhook dispatcher starting")
        await serve(settings, stop)

    asyncio.run(main())
