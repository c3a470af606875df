"""After the engine: store the audio, emit the one completion per job, project job status.

The storage step is idempotent: a redelivered result writes the same bytes under the same key.
"""

from __future__ import annotations

import time
from typing import Any

from schemas.status import JobStatus
from stream_workers.result_cache import CachedAudio, ResultCache
from voicenote.audio import CONTENT_TYPES, EXTENSIONS, UnsupportedFormat, encode, wav_info
from voicenote.errors import AudioNotFound
from voicenote.jobstore import JobStore
from voicenote.settings import StorageSettings
from voicenote.storage import AudioStore, audio_key

_CARRIED = ("job_id", "created_at", "format", "engine", "model_version", "batch_size", "queued_ms",
            "batch_wait_ms", "engine_ms", "webhook_url", "batch_id", "trace_parent")


def _now_ms() -> int:
    return int(time.time() * 1000)


class Storer:
    """A SynthesisResult record in, a JobCompletion record out.

    Audio arrives inline, as a claim check (WAV parked by the synthesis side), or as a cache hit (the
    stored audio of an identical earlier request, already in the requested format). Either way it is
    written under the job's own deterministic key, so a redelivery overwrites identical bytes.
    """

    def __init__(self, store: AudioStore, settings: StorageSettings, *, public_base_url: str = "",
                 cache: ResultCache | None = None) -> None:
        self._store = store
        self._settings = settings
        self._base = public_base_url.rstrip("/")
        self._cache = cache

    async def complete(self, result: dict[str, Any]) -> dict[str, Any]:
        base = {name: result.get(name) for name in _CARRIED}
        base["cache_hit"] = bool(result.get("cache_hit"))
        if result["status"] == "cancelled":
            return {**base, "status": "cancelled", "completed_at": _now_ms(), "error_code": result.get("error_code") or "cancelled",
                    "error_message": result.get("error_message") or "the job was cancelled"}
        if result["status"] != "succeeded":
            return _failed(base, result.get("error_code") or "engine_error", result.get("error_message") or "synthesis failed")
        fmt = result.get("format") or "wav"
        try:
            if result.get("cache_hit"):
                data = await self._store.get(result["audio_ref"])
                sample_rate, duration_ms = result.get("sample_rate") or 0, result.get("duration_ms") or 0
            else:
                wav = result.get("audio")
                if wav is None:
                    wav = await self._store.get(result["audio_ref"])
                data = encode(wav, fmt)
                sample_rate, frames = wav_info(wav)
                duration_ms = int(1000 * frames / sample_rate) if sample_rate else 0
        except AudioNotFound as exc:
            return _failed(base, "audio_missing", f"stored audio {exc} is gone (expired or deleted); submit the request again")
        except UnsupportedFormat as exc:
            return _failed(base, exc.code, str(exc))
        key = audio_key(self._settings.key_prefix, result["job_id"], EXTENSIONS[fmt])
        started = time.perf_counter()
        stored = await self._store.put(
            key, data, CONTENT_TYPES[fmt],
            metadata={"job-id": result["job_id"], "engine": result.get("engine") or "",
                      "model-version": result.get("model_version") or "", "format": fmt},
        )
        upload_ms = int((time.perf_counter() - started) * 1000)
        if self._cache is not None and result.get("cache_key") and not result.get("cache_hit"):
            await self._cache.record(result["cache_key"], CachedAudio(
                audio_key=stored.key, content_type=stored.content_type, size_bytes=stored.size, sample_rate=sample_rate,
                duration_ms=duration_ms, source_job_id=result["job_id"]))
        return {
            **base,
            "status": "succeeded",
            "completed_at": _now_ms(),
            "audio_key": stored.key,
            "audio_uri": stored.uri,
            "audio_url": await self.audio_url(result["job_id"], stored.key),
            "content_type": stored.content_type,
            "size_bytes": stored.size,
            "sample_rate": sample_rate,
            "duration_ms": duration_ms,
            "upload_ms": upload_ms,
        }

    async def audio_url(self, job_id: str, key: str) -> str:
        """A presigned GET where storage has one, else the API's audio route (which serves local files)."""
        url = await self._store.url_for(key, self._settings.presign_expiry_seconds)
        return url if url is not None else f"{self._base}/v1/jobs/{job_id}/audio"


def _failed(base: dict[str, Any], code: str, message: str) -> dict[str, Any]:
    return {**base, "status": "failed", "completed_at": _now_ms(), "error_code": code, "error_message": message}


class StatusProjector:
    """Requests and completions in, forward-only job records in Redis out."""

    def __init__(self, jobs: JobStore) -> None:
        self._jobs = jobs

    async def on_request(self, request: dict[str, Any]) -> bool:
        return await self._jobs.transition(
            request["job_id"],
            JobStatus.queued,
            {"created_at": request["created_at"], "format": request["format"], "voice": request["voice"],
             "priority": request["priority"], "batch_id": request.get("batch_id"), "webhook_url": request.get("webhook_url")},
        )

    async def on_completion(self, completion: dict[str, Any]) -> bool:
        fields = {k: completion.get(k) for k in (
            "created_at", "completed_at", "audio_key", "content_type", "format", "size_bytes", "duration_ms",
            "sample_rate", "engine", "model_version", "batch_size", "queued_ms", "batch_wait_ms", "engine_ms",
            "upload_ms", "error_code", "error_message", "cache_hit")}
        fields["cache_hit"] = int(bool(fields["cache_hit"]))
        moved = await self._jobs.transition(completion["job_id"], JobStatus(completion["status"]), fields)
        if completion.get("webhook_url"):
            # Visible at once; the dispatcher's later states (attempts >= 1) replace it, never the reverse.
            await self._jobs.record_webhook(completion["job_id"], "pending", 0)
        return moved
