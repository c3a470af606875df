"""Submission: publish a routed request as a typed ``SynthesisRequest`` to its model's topic, then record it queued.

Kafka is the source of truth and Redis a projection: when Redis is down, an ``/async`` request without an
Idempotency-Key is still accepted (the status projector writes ``queued`` from the topic once Redis is
back); anything that needs Redis to be right answers 503 and publishes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from producer_api.auth import Caller
from producer_api.estimate import ThroughputEstimator
from producer_api.metrics import ApiMetrics
from producer_api.models import AsyncAccepted, SpeechRequest
from producer_api.services.admission import Admission
from producer_api.services.common import Links
from producer_api.services.routing import ModelRouter, Routed
from schemas.clock import now_ms
from schemas.codec import Codecs
from schemas.events import STREAM_ATTRIBUTE, TIMESTAMPS_ATTRIBUTE, SynthesisRequest
from schemas.status import JobStatus
from voicenote.client import new_job_id
from voicenote.errors import JobStoreError
from voicenote.idempotency import ASYNC, IdempotencyMark, mark_attributes
from voicenote.jobstore import JobStore
from voicenote.kafka import AsyncProducer
from voicenote.tracing import TRACEPARENT, publish_span

log = logging.getLogger(__name__)


class Submission:
    def __init__(self, *, producer: AsyncProducer, jobs: JobStore, codecs: Codecs, metrics: ApiMetrics,
                 estimators: Mapping[str, ThroughputEstimator], links: Links, admission: Admission, router: ModelRouter) -> None:
        self._producer = producer
        self._jobs = jobs
        self._codecs = codecs
        self._metrics = metrics
        self._estimators = estimators  # by model family
        self._links = links
        self._admission = admission
        self._router = router

    def estimate_seconds(self, family: str, ahead: int = 0) -> float:
        return self._estimators[family].estimate_seconds(ahead=ahead)

    async def submit_async(self, caller: Caller, req: SpeechRequest, idempotency_key: str | None) -> AsyncAccepted:
        routed = await self._router.route_for(caller, req)

        async def publish(mark: IdempotencyMark | None) -> dict[str, Any]:
            job_id = new_job_id()
            # Estimated before publishing: under a key the event carries the answer (voicenote/idempotency.py).
            estimate = self.estimate_seconds(routed.model.family)
            await self.publish(job_id, routed, caller, priority="batch", attributes=mark_attributes(mark, estimate),
                               estimated_seconds=estimate)
            return {"job_id": job_id, "status_url": self._links.job(job_id), "estimated_seconds": estimate,
                    "ignored_params": routed.ignored}

        return AsyncAccepted(**await self._admission.once(caller, idempotency_key, ASYNC, req, publish))

    async def publish(self, job_id: str, routed: Routed, caller: Caller, *, priority: str, batch_id: str | None = None,
                      stream: bool = False, created_at: int | None = None, attributes: Mapping[str, str] | None = None,
                      estimated_seconds: float | None = None) -> None:
        """Publish the request event (returns after the broker's ack), then write the job's ``queued`` record.

        ``stream``: the synthesis worker publishes each finished segment too (docs/streaming.md). ``created_at``:
        the request's time (default now; a batch's items share the batch's). ``attributes``: more for the event
        (a batch item's position, an Idempotency-Key's mark); they do not replace the ones set here.
        ``estimated_seconds``: the answer's estimate, kept on the record for the early check (stream_workers/completion/early_check.py)."""
        req, model, voice = routed.request, routed.model, routed.voice
        attributes = {**(attributes or {}), "owner": caller.name, "voice_requested": req.voice, "model_requested": req.model}
        if stream:
            attributes[STREAM_ATTRIBUTE] = "true"
        if req.timestamps:
            attributes[TIMESTAMPS_ATTRIBUTE] = req.timestamps
        if routed.ignored:
            attributes["ignored_params"] = ",".join(routed.ignored)
        with publish_span(job_id) as traceparent:
            event = SynthesisRequest(
                job_id=job_id, created_at=created_at if created_at is not None else now_ms(), text=req.input, voice=voice.id, format=req.response_format, speed=req.speed,
                model=model.id, temperature=req.temperature, top_p=req.top_p, repetition_penalty=req.repetition_penalty,
                seed=req.seed, instructions=req.instructions, webhook_url=req.webhook_url, priority=priority,
                batch_id=batch_id, trace_parent=traceparent, attributes=attributes, use_cache=req.use_cache)
            await self._producer.send(model.request_topic, self._codecs.request.encode_event(event), key=job_id.encode(),
                                      headers=[(TRACEPARENT, traceparent.encode())] if traceparent else None)
        self._metrics.jobs_submitted.labels(priority).inc()
        # After the ack: the projection never moves backwards, so a completion recorded first stays.
        try:
            await self._jobs.transition(job_id, JobStatus.queued, {
                "created_at": event.created_at, "format": event.format, "voice": event.voice, "owner": caller.name,
                "priority": event.priority, "batch_id": event.batch_id, "model": event.model,
                "ignored_params": attributes.get("ignored_params"), "estimated_seconds": estimated_seconds})
            # Indexed for the watchdog at once, not only once the projection reads the request: a broker that loses
            # its data before then would leave the job `queued` and unindexed for good (stream_workers/completion/watchdog.py).
            await self._jobs.track_pending([(job_id, event.created_at)])
        except JobStoreError as exc:
            # The job is on the request topic; the status projector records it once Redis answers.
            self._metrics.redis_fallbacks.labels("queued_record").inc()
            log.warning("job %s accepted without its queued record: %s", job_id, exc)
