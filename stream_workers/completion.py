"""After the engine: store the audio, emit the one completion per job, project job status.

The storage step is idempotent: a redelivered result writes the same bytes under the same key.
"""

from __future__ import annotations

import time
from typing import Any

from schemas.status import JobStatus
from voicenote.audio import CONTENT_TYPES, EXTENSIONS, UnsupportedFormat, encode, wav_info
from voicenote.jobstore import JobStore
from voicenote.settings import StorageSettings
from voicenote.storage import AudioStore, audio_key

_CARRIED = ("job_id", "created_at", "format", "engine", "model_version", "batch_size", "queued_ms",
            "batch_wait_ms", "engine_ms", "webhook_url", "batch_id", "trace_parent")


def _now_ms() -> int:
    return int(time.time() * 1000)


class Storer:
    """A SynthesisResult record in, a JobCompletion record out."""

    def __init__(self, store: AudioStore, settings: StorageSettings) -> None:
        self._store = store
        self._settings = settings

    async def complete(self, result: dict[str, Any]) -> dict[str, Any]:
        base = {name: result.get(name) for name in _CARRIED}
        if result["status"] == "cancelled":
            return {**base, "status": "cancelled", "completed_at": _now_ms(), "error_code": result.get("error_code") or "cancelled",
                    "error_message": result.get("error_message") or "the job was cancelled"}
        if result["status"] != "succeeded":
            return {**base, "status": "failed", "completed_at": _now_ms(),
                    "error_code": result.get("error_code") or "engine_error",
                    "error_message": result.get("error_message") or "synthesis failed"}
        wav = result.get("audio")
        if wav is None:
            wav = await self._store.get(result["audio_ref"])
        fmt = result.get("format") or "wav"
        try:
            data = encode(wav, fmt)
        except UnsupportedFormat as exc:
            return {**base, "status": "failed", "completed_at": _now_ms(), "error_code": exc.code, "error_message": str(exc)}
        sample_rate, frames = wav_info(wav)
        key = audio_key(self._settings.key_prefix, result["job_id"], EXTENSIONS[fmt])
        started = time.perf_counter()
        stored = await self._store.put(
            key, data, CONTENT_TYPES[fmt],
            metadata={"job-id": result["job_id"], "engine": result.get("engine") or "", "model-version": result.get("model_version") or ""},
        )
        upload_ms = int((time.perf_counter() - started) * 1000)
        return {
            **base,
            "status": "succeeded",
            "completed_at": _now_ms(),
            "audio_key": stored.key,
            "audio_uri": stored.uri,
            "content_type": stored.content_type,
            "size_bytes": stored.size,
            "sample_rate": sample_rate,
            "duration_ms": int(1000 * frames / sample_rate) if sample_rate else 0,
            "upload_ms": upload_ms,
        }


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
            "upload_ms", "error_code", "error_message")}
        return await self._jobs.transition(completion["job_id"], JobStatus(completion["status"]), fields)
