"""The API's one service: rate-limit, deduplicate and publish requests; read jobs and batches back.

What happens when Redis is down (Kafka is the source of truth, Redis a projection):
- ``/async`` without an Idempotency-Key is still accepted: the record is on the request topic, the
  status projector writes ``queued`` from it once Redis is back, and rate limits fall back to
  per-process buckets (counted in ``voicenote_api_redis_fallbacks``).
- Anything that cannot be done right without Redis answers 503 with Retry-After and publishes
  nothing: requests with an Idempotency-Key, batches (their record lives in Redis), the synchronous
  endpoint (it waits on Redis pub/sub), and every read (job, batch, audio lookup).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from producer_api.auth import Caller
from producer_api.errors import ApiError
from producer_api.estimate import ThroughputEstimator
from producer_api.idempotency import IdempotencyStore, fingerprint
from producer_api.metrics import ApiMetrics
from producer_api.models import (
    AsyncAccepted,
    BatchAccepted,
    BatchRequest,
    BatchView,
    JobError,
    JobView,
    SpeechRequest,
    WebhookState,
)
from producer_api.ratelimit import RateLimiter
from producer_api.waiter import CompletionWaiter
from schemas.codec import Codecs
from schemas.events import STREAM_ATTRIBUTE
from schemas.status import JobStatus
from schemas.topics import TopicCatalog
from voicenote.adverts import EngineAdvert, read_adverts
from voicenote.audio import CONTENT_TYPES
from voicenote.errors import AudioNotFound, JobStoreError
from voicenote.jobstore import JobStore
from voicenote.kafka import AsyncProducer
from voicenote.models import Model, ModelRegistry, UnknownModel, UnknownVoiceName, Voice
from voicenote.settings import ApiSettings
from voicenote.storage import AudioStore
from voicenote.tracing import TRACEPARENT, publish_span

log = logging.getLogger(__name__)

_RECHECK_SECONDS = 2.0


def new_job_id() -> str:
    return "job_" + secrets.token_urlsafe(16).replace("-", "x").replace("_", "y")


def new_batch_id() -> str:
    return "batch_" + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")


def _now_ms() -> int:
    return int(time.time() * 1000)


IGNORED_HEADER = "X-Voicenote-Ignored-Params"


@dataclass(frozen=True)
class Audio:
    data: bytes
    content_type: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Routed:
    """A request resolved against the model registry: where it goes and what its engine will ignore."""

    request: SpeechRequest
    model: Model
    voice: Voice
    ignored: list[str]


def ignored_header(ignored: list[str]) -> dict[str, str]:
    return {IGNORED_HEADER: ", ".join(ignored)} if ignored else {}


class JobService:
    def __init__(self, *, producer: AsyncProducer, jobs: JobStore, redis: aioredis.Redis, store: AudioStore, codecs: Codecs,
                 catalog: TopicCatalog, api: ApiSettings, key_prefix: str, job_ttl: int, presign_expiry: int,
                 limiter: RateLimiter, idempotency: IdempotencyStore, waiter: CompletionWaiter,
                 estimators: Mapping[str, ThroughputEstimator], metrics: ApiMetrics, models: ModelRegistry) -> None:
        self._producer = producer
        self._jobs = jobs
        self._redis = redis
        self._store = store
        self._codecs = codecs
        self._catalog = catalog
        self._api = api
        self._base = api.public_base_url.rstrip("/")
        self._prefix = key_prefix
        self._job_ttl = job_ttl
        self._presign_expiry = presign_expiry
        self._limiter = limiter
        self._idem = idempotency
        self._waiter = waiter
        self._estimators = estimators  # by model family
        self._metrics = metrics
        self.models = models

    def status_url(self, job_id: str) -> str:
        return f"{self._base}/v1/jobs/{job_id}"

    # -- limits -------------------------------------------------------------------------------

    async def charge(self, caller: Caller, cost: int = 1) -> None:
        if cost > caller.burst:
            raise ApiError(429, f"this request costs {cost} tokens but the key's burst is {caller.burst}; send fewer items",
                           type_="rate_limit_error", code="rate_limit_exceeded")
        decision = await self._limiter.take(caller.rate_key, caller.rate_per_second, caller.burst, cost)
        if not decision.allowed:
            self._metrics.rate_limited.inc()
            raise ApiError(429, f"rate limit of {caller.rate_per_second:g} requests/s (burst {caller.burst}) exceeded; "
                                f"retry in {decision.retry_after_seconds}s", type_="rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": str(decision.retry_after_seconds)})

    # -- routing ------------------------------------------------------------------------------

    def route(self, req: SpeechRequest, where: str = "") -> Routed:
        """Resolve ``model`` and ``voice``; 400 naming the valid ones when either is unknown."""
        try:
            model = self.models.get(req.model)
        except UnknownModel as exc:
            raise ApiError(400, str(exc), param=f"{where}model", code="model_not_found") from None
        try:
            voice = model.resolve_voice(req.voice)
        except UnknownVoiceName as exc:
            raise ApiError(400, str(exc), param=f"{where}voice", code="unknown_voice") from None
        return Routed(req, model, voice, model.ignored(req.model_dump()))

    async def running_engines(self) -> dict[str, EngineAdvert]:
        """By model family, what the running synthesis workers advertise (families with no live worker are absent)."""
        return await read_adverts(self._redis, self._prefix, sorted({m.family for m in self.models.models}))

    # -- submission ---------------------------------------------------------------------------

    async def submit_async(self, caller: Caller, req: SpeechRequest, idempotency_key: str | None) -> AsyncAccepted:
        routed = self.route(req)

        async def publish() -> dict[str, Any]:
            job_id = new_job_id()
            await self._publish(job_id, routed, caller, priority="batch")
            return {"job_id": job_id, "status_url": self.status_url(job_id),
                    "estimated_seconds": self._estimators[routed.model.family].estimate_seconds(), "ignored_params": routed.ignored}

        return AsyncAccepted(**await self._idempotent(caller, idempotency_key, "speech.async", req, publish))

    async def submit_batch(self, caller: Caller, batch: BatchRequest, idempotency_key: str | None) -> BatchAccepted:
        n = len(batch.requests)
        if n > self._api.batch_max_items:
            raise ApiError(400, f"a batch holds at most {self._api.batch_max_items} requests; this one has {n}",
                           param="requests", code="batch_too_large")
        if n > 1:
            await self.charge(caller, n - 1)  # the route's dependency already took one
        routed = [self.route(item.as_speech(batch.webhook_url), f"requests.{i}.") for i, item in enumerate(batch.requests)]

        async def publish() -> dict[str, Any]:
            batch_id = new_batch_id()
            job_ids = [new_job_id() for _ in range(n)]
            key = self._batch_key(batch_id)
            try:
                await self._redis.hset(key, mapping={"owner": caller.name, "created_at": _now_ms(), "job_ids": json.dumps(job_ids)})
                await self._redis.expire(key, self._job_ttl)
            except (RedisError, OSError) as exc:
                raise JobStoreError(f"cannot record batch: {exc}") from exc
            results = await asyncio.gather(
                *(self._publish(job_id, item, caller, priority="batch", batch_id=batch_id)
                  for job_id, item in zip(job_ids, routed, strict=True)),
                return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                await self._abandon_batch(batch_id, [j for j, r in zip(job_ids, results, strict=True) if not isinstance(r, BaseException)])
                raise failed[0]
            return {"batch_id": batch_id, "job_ids": job_ids, "status_url": f"{self._base}/v1/batches/{batch_id}",
                    # Each family's workers go through their own share of the batch; the slowest answers.
                    "estimated_seconds": max(self._estimators[family].estimate_seconds(ahead=count - 1)
                                             for family, count in Counter(item.model.family for item in routed).items()),
                    "ignored_params": {job_id: item.ignored for job_id, item in zip(job_ids, routed, strict=True) if item.ignored}}

        return BatchAccepted(**await self._idempotent(caller, idempotency_key, "speech.batch", batch, publish))

    async def speak(self, caller: Caller, req: SpeechRequest, idempotency_key: str | None) -> Audio:
        """Publish as interactive and wait for the job's end; 504 with the job id past the timeout."""
        routed = self.route(req)
        if not self._waiter.subscribed.is_set():
            raise JobStoreError("not subscribed to completions, cannot wait for the audio")

        async def publish() -> dict[str, Any]:
            job_id = new_job_id()
            await self._publish(job_id, routed, caller, priority="interactive")
            return {"job_id": job_id}

        # No lost wake-up: _wait_terminal registers for the job's completion, then re-reads the record.
        job_id = (await self._idempotent(caller, idempotency_key, "speech", req, publish))["job_id"]
        record = await self._wait_terminal(job_id, self._api.sync_timeout_seconds)
        status = record["status"]
        if status == JobStatus.succeeded.value:
            try:
                data = await self._store.get(record["audio_key"])
            except AudioNotFound:
                raise ApiError(410, f"the audio of job {job_id!r} has expired", code="audio_expired") from None
            fmt = record.get("format", req.response_format)
            headers = {**self._audio_headers(job_id, fmt, record, routed.model.sample_rate), **ignored_header(routed.ignored)}
            return Audio(data, record.get("content_type") or CONTENT_TYPES[fmt], headers)
        headers = {"X-Job-Id": job_id, **ignored_header(routed.ignored)}
        if status == JobStatus.cancelled.value:
            raise ApiError(409, f"job {job_id} was cancelled", code="job_cancelled", headers=headers)
        code, message = record.get("error_code", "unknown"), record.get("error_message", "synthesis failed")
        if code == "invalid_request":
            raise ApiError(400, f"job {job_id}: {message}", code=code, headers=headers)
        raise ApiError(500, f"job {job_id} failed: {message}", type_="server_error", code=code, headers=headers)

    async def _wait_terminal(self, job_id: str, timeout: float) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._waiter.watch(job_id) as done:
                record = await self._jobs.get(job_id)  # after registering: a completion in between is not lost
                if record is not None and JobStatus(record["status"]).terminal:
                    return record
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ApiError(504, f"job {job_id} is not finished after {timeout:g}s; poll {self.status_url(job_id)}",
                                   type_="server_error", code="timeout", param=None,
                                   headers={"X-Job-Id": job_id, "Location": self.status_url(job_id)})
                try:
                    await asyncio.wait_for(done, min(remaining, _RECHECK_SECONDS))
                except TimeoutError:
                    pass

    async def _publish(self, job_id: str, routed: Routed, caller: Caller, *, priority: str, batch_id: str | None = None,
                       stream: bool = False) -> None:
        created_at = _now_ms()
        req, model, voice = routed.request, routed.model, routed.voice
        attributes = {"owner": caller.name, "voice_requested": req.voice, "model_requested": req.model}
        if stream:
            attributes[STREAM_ATTRIBUTE] = "true"  # the synthesis worker publishes each finished segment
        if routed.ignored:
            attributes["ignored_params"] = ",".join(routed.ignored)
        record: dict[str, Any] = {
            "job_id": job_id, "created_at": created_at, "text": req.input, "voice": voice.id, "format": req.response_format,
            "speed": req.speed, "model": model.id, "temperature": req.temperature, "top_p": req.top_p,
            "repetition_penalty": req.repetition_penalty, "seed": req.seed, "instructions": req.instructions,
            "webhook_url": req.webhook_url, "priority": priority, "deadline_at": None, "batch_id": batch_id, "trace_parent": None,
            "attributes": attributes, "use_cache": req.use_cache,
        }
        with publish_span(job_id) as traceparent:
            record["trace_parent"] = traceparent
            await self._producer.send(model.request_topic, self._codecs.request.encode(record), key=job_id.encode(),
                                      headers=[(TRACEPARENT, traceparent.encode())] if traceparent else None)
        self._metrics.jobs_submitted.labels(priority).inc()
        # After the ack: the projection never moves backwards, so a completion recorded first stays.
        try:
            await self._jobs.transition(job_id, JobStatus.queued, {
                "created_at": created_at, "format": req.response_format, "voice": voice.id, "owner": caller.name,
                "priority": priority, "batch_id": batch_id, "model": model.id,
                "ignored_params": attributes.get("ignored_params")})
        except JobStoreError as exc:
            # The job is on the request topic; the status projector records it once Redis answers.
            self._metrics.redis_fallbacks.labels("queued_record").inc()
            log.warning("job %s accepted without its queued record: %s", job_id, exc)

    async def _idempotent(self, caller: Caller, key: str | None, endpoint: str, body: Any,
                          action: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        if key is None:
            return await action()
        fp = fingerprint(endpoint, body.model_dump(mode="json"))
        reservation = await self._idem.reserve(caller.name, key, fp)
        if reservation.replay is not None:
            return reservation.replay
        try:
            response = await action()
        except BaseException:
            await self._idem.release(reservation)
            raise
        try:
            await self._idem.complete(reservation, fp, response)
        except JobStoreError as exc:
            log.warning("job accepted but its Idempotency-Key was not recorded: %s", exc)
        return response

    async def _abandon_batch(self, batch_id: str, published: list[str]) -> None:
        """A batch that failed part-way: cancel what got published so no half batch runs, and drop the record."""
        for job_id in published:
            try:
                await self._jobs.transition(job_id, JobStatus.cancelled, {
                    "completed_at": _now_ms(), "error_code": "batch_incomplete",
                    "error_message": f"batch {batch_id} could not be fully published"})
            except JobStoreError as exc:
                log.error("cannot cancel job %s of abandoned batch %s: %s", job_id, batch_id, exc)
        try:
            await self._redis.delete(self._batch_key(batch_id))
        except (RedisError, OSError) as exc:
            log.error("cannot remove abandoned batch %s: %s", batch_id, exc)

    # -- reading and cancelling ---------------------------------------------------------------

    async def _owned(self, caller: Caller, job_id: str) -> dict[str, str]:
        record = await self._jobs.get(job_id)
        # Another key's job looks like no job at all: ids are not confirmed to those who do not own them.
        # A job published straight to Kafka without attributes.owner belongs to no key: admin-only.
        if record is None or (record.get("owner") != caller.name and "admin" not in caller.scopes):
            raise ApiError(404, f"no job {job_id!r} (unknown, or expired)", code="job_not_found", param="job_id")
        return record

    async def view(self, caller: Caller, job_id: str) -> JobView:
        return self._view(job_id, await self._owned(caller, job_id))

    def _view(self, job_id: str, record: dict[str, str]) -> JobView:
        status = record["status"]
        timings = {k: int(record[k]) for k in ("queued_ms", "batch_wait_ms", "engine_ms", "upload_ms") if k in record}
        error = None
        if status in (JobStatus.failed.value, JobStatus.cancelled.value) and (status == "failed" or "error_code" in record):
            error = JobError(code=record.get("error_code", "cancelled" if status == "cancelled" else "unknown"),
                             message=record.get("error_message", ""))
        ignored = record.get("ignored_params")
        return JobView(
            job_id=job_id, status=status, model=record.get("model"),
            ignored_params=ignored.split(",") if ignored else None,
            audio_url=f"{self._base}/v1/jobs/{job_id}/audio" if status == JobStatus.succeeded.value else None,
            error=error,
            created_at=int(record["created_at"]) if "created_at" in record else None,
            completed_at=int(record["completed_at"]) if "completed_at" in record else None,
            timings=timings,
            webhook=WebhookState(status=record["webhook_status"], attempts=int(record.get("webhook_attempts", 0)),
                                 last_error=record.get("webhook_last_error") or None) if "webhook_status" in record else None,
        )

    async def cancel(self, caller: Caller, job_id: str) -> JobView:
        record = await self._owned(caller, job_id)
        if record["status"] != JobStatus.queued.value:
            raise ApiError(409, f"job {job_id} is {record['status']}; only a queued job can be cancelled",
                           code="job_not_cancellable", param="job_id")
        moved = await self._jobs.transition(job_id, JobStatus.cancelled, {
            "completed_at": _now_ms(), "error_code": "cancelled", "error_message": f"cancelled by {caller.name}"})
        record = await self._owned(caller, job_id)
        if not moved and record["status"] != JobStatus.cancelled.value:
            raise ApiError(409, f"job {job_id} is {record['status']}; only a queued job can be cancelled",
                           code="job_not_cancellable", param="job_id")
        return self._view(job_id, record)

    async def audio(self, caller: Caller, job_id: str) -> tuple[str | None, Audio | None]:
        """(presigned URL, None) when storage serves it directly, else (None, the audio)."""
        record = await self._owned(caller, job_id)
        if record.get("status") != JobStatus.succeeded.value or "audio_key" not in record:
            raise ApiError(404, f"job {job_id!r} has no audio (yet)", code="audio_not_found", param="job_id")
        key, fmt = record["audio_key"], record.get("format", "wav")
        content_type = record.get("content_type") or CONTENT_TYPES.get(fmt, "application/octet-stream")
        url = await self._store.url_for(key, self._presign_expiry)
        if url is not None:
            return url, None
        try:
            data = await self._store.get(key)
        except AudioNotFound:
            raise ApiError(410, f"the audio of job {job_id!r} has expired", code="audio_expired", param="job_id") from None
        try:
            rate = self.models.get(record.get("model", "tts-1")).sample_rate
        except UnknownModel:  # a model this deployment no longer serves: the stored rate (below) still answers
            rate = 0
        return None, Audio(data, content_type, self._audio_headers(job_id, fmt, record, rate))

    def _audio_headers(self, job_id: str, fmt: str, record: dict[str, str], model_rate: int) -> dict[str, str]:
        headers = {"X-Job-Id": job_id}
        if fmt == "pcm":
            rate = record.get("sample_rate") or str(model_rate)
            headers.update({"X-Sample-Rate": rate, "X-Channels": "1", "X-Sample-Format": "s16le"})
        return headers

    def _batch_key(self, batch_id: str) -> str:
        return f"{self._prefix}batch:{batch_id}"

    async def batch(self, caller: Caller, batch_id: str) -> BatchView:
        try:
            record = await self._redis.hgetall(self._batch_key(batch_id))
            if not record or record.get("owner") != caller.name:
                raise ApiError(404, f"no batch {batch_id!r} (unknown, or expired)", code="batch_not_found", param="batch_id")
            job_ids: list[str] = json.loads(record["job_ids"])
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(self._jobs.job_key(job_id), "status")
                statuses = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise JobStoreError(f"cannot read batch {batch_id}: {exc}") from exc
        counts: dict[str, int] = {}
        for status in statuses:
            # Accepted means on the request topic: a job without a record yet is queued.
            counts[status or JobStatus.queued.value] = counts.get(status or JobStatus.queued.value, 0) + 1
        return BatchView(batch_id=batch_id, created_at=int(record["created_at"]), total=len(job_ids), counts=counts, job_ids=job_ids)

    async def ready(self) -> dict[str, bool]:
        return {"redis": await self._jobs.ping(), "storage": await self._store.ping()}


