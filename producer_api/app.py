"""Builds the FastAPI app from settings; the lifespan owns the Kafka producer, Redis and storage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from producer_api.auth import Authenticator
from producer_api.bodylimit import BodyLimitMiddleware, RouteLimit
from producer_api.errors import install_error_handlers
from producer_api.estimate import GroupLag, LagMonitor, ThroughputEstimator
from producer_api.metrics import ApiMetrics, MetricsMiddleware, serve_metrics
from producer_api.routes import health, jobs, models, playground, speech, voices
from producer_api.services.container import Services
from producer_api.services.voices import sweep_forever
from producer_api.services.worker_groups import WorkerGroups
from producer_api.streaming import SegmentRouter
from producer_api.waiter import CompletionWaiter
from schemas.topics import CPU_FAMILY
from voicenote.jobstore import JobStore, redis_client
from voicenote.kafka import AsyncProducer, event_codecs
from voicenote.models import ModelRegistry, synthesis_group
from voicenote.settings import Settings
from voicenote.storage import build_store

DESCRIPTION = """Text to voice notes over Kafka. `POST /v1/audio/speech` is compatible with OpenAI's speech endpoint
(point the `openai` package's `base_url` here). Authenticate with `Authorization: Bearer <key>`.
Every error uses OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`. Try it in a browser at
[`/playground`](/playground) (also `/web`), the playground page."""


def create_app(settings: Settings) -> FastAPI:
    auth = Authenticator(settings.api)  # refuses to build without keys unless anonymous use is explicit
    metrics = ApiMetrics()
    model_registry = ModelRegistry.from_settings(settings)  # built here: a bad model setting stops start-up
    # One estimate per model family: each family's workers have their own lag and speed.
    estimators = {family: ThroughputEstimator(settings.api.estimate_prior_jobs_per_second) for family in settings.models.families}
    estimator = estimators.get(CPU_FAMILY) or next(iter(estimators.values()))  # the one /metrics shows
    metrics.follow(estimator)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        codecs = event_codecs(settings.kafka)  # the one codec of this deployment (registry included), shared
        catalog = settings.kafka.catalog()
        producer = AsyncProducer(settings.kafka)
        redis = redis_client(settings.redis, socket_connect_timeout=2, socket_timeout=5)
        job_store = JobStore(redis, settings.redis)
        store = build_store(settings.storage)
        waiter = CompletionWaiter(redis, job_store.done_channel(""))
        monitors = [LagMonitor(GroupLag(settings.kafka, synthesis_group(settings.worker.group_id, family)),
                               catalog.requests_for(family).name, catalog.requests_for(family).partitions, family_estimator,
                               settings.api.estimate_refresh_seconds, settings.api.estimate_idle_refresh_seconds)
                    for family, family_estimator in estimators.items()]
        # /readyz waits for the workers' groups only where asked (voicenote run); see services/worker_groups.py.
        workers = WorkerGroups(settings) if settings.api.ready_requires_workers else None
        app.state.services = Services.build(
            settings, producer=producer, redis=redis, jobs=job_store, store=store, codecs=codecs, waiter=waiter,
            estimators=estimators, metrics=metrics, models=model_registry, workers=workers)
        waiter.start()
        if workers is not None:
            workers.start()
        segments = SegmentRouter(settings.kafka, catalog.segments, codecs) if catalog.segments else None
        app.state.segments = segments
        if segments is not None:
            segments.start()
        for monitor in monitors:
            monitor.start()
        sweeper = asyncio.create_task(sweep_forever(app.state.services.voices, settings.api.ephemeral_voice_sweep_seconds),
                                      name="ephemeral-voice-sweep")
        stop_metrics = (serve_metrics(metrics, settings.api.host, settings.api.metrics_port)
                        if settings.api.metrics_port is not None else None)
        try:
            yield
        finally:
            if stop_metrics is not None:
                stop_metrics()
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
            for monitor in monitors:
                await monitor.stop()
            if workers is not None:
                await workers.stop()
            await waiter.stop()
            if segments is not None:
                await asyncio.to_thread(segments.stop)
            producer.close()
            await redis.aclose()
            await store.close()

    app = FastAPI(title="Voicenote", version="0.2.0", lifespan=lifespan, description=DESCRIPTION)
    app.state.auth = auth
    app.state.metrics = metrics
    app.state.estimator = estimator
    install_error_handlers(app)
    app.include_router(speech.router)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(voices.router)
    app.include_router(health.router)
    app.include_router(playground.router)  # GET /playground and /web: no key needed for the page; its calls send the key typed in
    if settings.api.metrics_port is None:  # otherwise only the metrics listener answers /metrics (serve_metrics)
        app.include_router(health.metrics_router)
    clip_limit = RouteLimit(settings.api.voice_upload_max_bytes, 400, "clip_too_large",
                            "the upload is larger than {limit} bytes, the limit for a voice clip: send 3-30 s of speech, "
                            "compressed (mp3, ogg or flac) if a wav is too large", param="audio")
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api.max_body_bytes, routes={("POST", "/v1/audio/voices"): clip_limit})
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
