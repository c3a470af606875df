"""All of the API's services, built once from settings and the lifespan's clients (producer_api/app.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from producer_api.estimate import ThroughputEstimator
from producer_api.idempotency import IdempotencyStore
from producer_api.metrics import ApiMetrics
from producer_api.ratelimit import RateLimiter
from producer_api.services.admission import Admission
from producer_api.services.audio import AudioAccess
from producer_api.services.batches import Batches
from producer_api.services.cancellation import Cancellation
from producer_api.services.common import Links
from producer_api.services.queries import JobQueries
from producer_api.services.readiness import Readiness
from producer_api.services.routing import ModelRouter
from producer_api.services.submission import Submission
from producer_api.services.sync import SyncSpeech
from producer_api.services.voices import VoiceRegistry
from producer_api.services.worker_groups import WorkerGroups
from producer_api.waiter import CompletionWaiter
from schemas.codec import Codecs
from voicenote.jobstore import JobStore
from voicenote.kafka import AsyncProducer
from voicenote.models import ModelRegistry
from voicenote.settings import Settings
from voicenote.storage import AudioStore


@dataclass(frozen=True)
class Services:
    admission: Admission
    router: ModelRouter
    submission: Submission
    batches: Batches
    sync: SyncSpeech
    queries: JobQueries
    cancellation: Cancellation
    audio: AudioAccess
    readiness: Readiness
    voices: VoiceRegistry

    @classmethod
    def build(cls, settings: Settings, *, producer: AsyncProducer, redis: aioredis.Redis, jobs: JobStore, store: AudioStore,
              codecs: Codecs, waiter: CompletionWaiter, estimators: Mapping[str, ThroughputEstimator], metrics: ApiMetrics,
              models: ModelRegistry, workers: WorkerGroups | None = None) -> Services:
        prefix = settings.redis.key_prefix
        links = Links(settings.api.public_base_url)
        admission = Admission(limiter=RateLimiter(redis, prefix, on_fallback=metrics.redis_fallbacks.labels("rate_limit").inc),
                              idempotency=IdempotencyStore(redis, prefix, settings.api.idempotency_ttl_seconds), metrics=metrics)
        voices = VoiceRegistry(store=store, ephemeral_ttl_seconds=settings.api.ephemeral_voice_ttl_seconds)
        router = ModelRouter(models=models, redis=redis, key_prefix=prefix, voices=voices)
        submission = Submission(producer=producer, jobs=jobs, codecs=codecs, metrics=metrics, estimators=estimators, links=links,
                                admission=admission, router=router)
        queries = JobQueries(jobs=jobs, links=links)
        return cls(
            admission=admission, router=router, submission=submission,
            batches=Batches(submission=submission, admission=admission, router=router, jobs=jobs,
                            max_items=settings.api.batch_max_items, links=links),
            sync=SyncSpeech(submission=submission, admission=admission, router=router, waiter=waiter, jobs=jobs, store=store,
                            timeout_seconds=settings.api.sync_timeout_seconds, links=links),
            queries=queries,
            cancellation=Cancellation(queries=queries, jobs=jobs),
            audio=AudioAccess(queries=queries, store=store, models=models, presign_expiry=settings.storage.presign_expiry_seconds),
            readiness=Readiness(producer=producer, jobs=jobs, store=store, workers=workers),
            voices=voices)
