"""The API's one service: submit a request to Kafka, read a job back from the projection."""

from __future__ import annotations

import secrets
import time
from typing import Any

from producer_api.errors import ApiError
from producer_api.models import JobError, JobView, SpeechRequest, WebhookState
from schemas.codec import Codecs
from schemas.status import JobStatus
from schemas.topics import TopicCatalog
from voicenote.errors import AudioNotFound
from voicenote.jobstore import JobStore
from voicenote.kafka import AsyncProducer
from voicenote.storage import AudioStore

# Rough synthesis speed of the CPU voice for the estimate (characters of text per second of work).
_CHARS_PER_SECOND = 300.0


def new_job_id() -> str:
    return "job_" + secrets.token_urlsafe(16).replace("-", "x").replace("_", "y")


class JobService:
    def __init__(self, producer: AsyncProducer, jobs: JobStore, store: AudioStore, codecs: Codecs,
                 catalog: TopicCatalog, public_base_url: str, presign_expiry: int) -> None:
        self._producer = producer
        self._jobs = jobs
        self._store = store
        self._codecs = codecs
        self._catalog = catalog
        self._base = public_base_url.rstrip("/")
        self._presign_expiry = presign_expiry

    def status_url(self, job_id: str) -> str:
        return f"{self._base}/v1/jobs/{job_id}"

    async def submit(self, req: SpeechRequest, *, priority: str = "batch") -> tuple[str, float]:
        """Publish the request; returns once the broker acknowledged it."""
        job_id = new_job_id()
        record: dict[str, Any] = {
            "job_id": job_id,
            "created_at": int(time.time() * 1000),
            "text": req.input,
            "voice": req.voice,
            "format": req.response_format,
            "speed": req.speed,
            "model": req.model,
            "temperature": None,
            "top_p": None,
            "repetition_penalty": None,
            "seed": None,
            "instructions": req.instructions,
            "webhook_url": req.webhook_url,
            "priority": priority,
            "deadline_at": None,
            "batch_id": None,
            "trace_parent": None,
            "attributes": {},
            "use_cache": req.use_cache,
        }
        await self._producer.send(self._catalog.requests.name, self._codecs.request.encode(record), key=job_id.encode())
        # After the ack: the projection never moves backwards, so a completion recorded first stays.
        await self._jobs.transition(job_id, JobStatus.queued, {"created_at": record["created_at"], "format": req.response_format})
        return job_id, round(0.2 + len(req.input) / _CHARS_PER_SECOND, 2)

    async def view(self, job_id: str) -> JobView:
        record = await self._jobs.get(job_id)
        if record is None:
            raise ApiError(404, f"no job {job_id!r} (unknown, or expired)", code="job_not_found", param="job_id")
        status = record["status"]
        timings = {k: int(record[k]) for k in ("queued_ms", "batch_wait_ms", "engine_ms", "upload_ms") if k in record}
        error = JobError(code=record.get("error_code", "unknown"), message=record.get("error_message", "")) if status == JobStatus.failed.value else None
        audio_url = None
        if status == JobStatus.succeeded.value:
            # A presigned GET where storage offers one (S3), else the API's own route (local files).
            presigned = await self._store.url_for(record["audio_key"], self._presign_expiry) if "audio_key" in record else None
            audio_url = presigned or f"{self._base}/v1/jobs/{job_id}/audio"
        webhook = WebhookState(status=record["webhook_status"], attempts=int(record.get("webhook_attempts", 0)),
                               last_error=record.get("webhook_last_error") or None) if "webhook_status" in record else None
        return JobView(
            job_id=job_id,
            status=status,
            audio_url=audio_url,
            webhook=webhook,
            error=error,
            created_at=int(record["created_at"]) if "created_at" in record else None,
            completed_at=int(record["completed_at"]) if "completed_at" in record else None,
            timings=timings,
        )

    async def audio(self, job_id: str) -> tuple[str | None, bytes | None, str]:
        """(presigned URL, None) when storage serves it directly, else (None, bytes); plus the content type."""
        record = await self._jobs.get(job_id)
        if record is None or record.get("status") != JobStatus.succeeded.value or "audio_key" not in record:
            raise ApiError(404, f"job {job_id!r} has no audio (yet)", code="audio_not_found", param="job_id")
        key, content_type = record["audio_key"], record.get("content_type", "application/octet-stream")
        url = await self._store.url_for(key, self._presign_expiry)
        if url is not None:
            return url, None, content_type
        try:
            return None, await self._store.get(key), content_type
        except AudioNotFound:
            raise ApiError(410, f"the audio of job {job_id!r} has expired", code="audio_expired", param="job_id") from None

    async def ready(self) -> dict[str, bool]:
        return {"redis": await self._jobs.ping(), "storage": await self._store.ping()}
