"""Audio access: a finished job's audio as a presigned storage URL, or its bytes where storage cannot presign."""

from __future__ import annotations

from producer_api.auth import Caller
from producer_api.errors import ApiError
from producer_api.services.common import Audio, audio_headers
from producer_api.services.queries import JobQueries
from schemas.status import JobStatus
from voicenote import captions
from voicenote.audio import CONTENT_TYPES
from voicenote.captions import WordTime
from voicenote.errors import AudioNotFound
from voicenote.models import ModelRegistry, UnknownModel
from voicenote.storage import AudioStore


class AudioAccess:
    def __init__(self, *, queries: JobQueries, store: AudioStore, models: ModelRegistry, presign_expiry: int) -> None:
        self._queries = queries
        self._store = store
        self._models = models
        self._presign_expiry = presign_expiry

    async def timestamps(self, caller: Caller, job_id: str) -> list[WordTime]:
        """The job's word timestamps; 409 with the reason where there are none (never estimated)."""
        record = await self._queries.owned(caller, job_id)
        status = record.get("status")
        if status in (JobStatus.queued.value, JobStatus.running.value):
            raise ApiError(409, f"job {job_id!r} is {status}; its timestamps come with its audio", code="timestamps_not_ready",
                           param="job_id")
        if status != JobStatus.succeeded.value:
            raise ApiError(409, f"job {job_id!r} is {status}: it has no audio, so no timestamps", code="timestamps_unavailable",
                           param="job_id")
        if "timestamps_key" not in record:
            if reason := record.get("timestamps_unavailable"):
                raise ApiError(409, f"job {job_id!r} has no word timestamps: {reason}", code="timestamps_unavailable",
                               param="job_id")
            raise ApiError(409, f"job {job_id!r} was submitted without timestamps; submit it with \"timestamps\": \"word\"",
                           code="timestamps_not_requested", param="job_id")
        try:
            return captions.loads(await self._store.get(record["timestamps_key"]))
        except AudioNotFound:
            raise ApiError(410, f"the timestamps of job {job_id!r} have expired", code="timestamps_expired",
                           param="job_id") from None

    async def fetch(self, caller: Caller, job_id: str) -> tuple[str | None, Audio | None]:
        """(presigned URL, None) when storage serves it directly, else (None, the audio)."""
        record = await self._queries.owned(caller, job_id)
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
            rate = self._models.get(record.get("model", "tts-1")).sample_rate
        except UnknownModel:  # a model this deployment no longer serves: the stored rate (below) still answers
            rate = 0
        return None, Audio(data, content_type, audio_headers(job_id, fmt, record, rate))
