"""After the engine: store the audio, emit the one completion per job, project job status.

The storage step is idempotent: a redelivered result writes the same bytes under the same key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas.status import JobStatus
from schemas.validation import REQUEST_DIGEST_FIELD, request_digest
from stream_workers.result_cache import CachedAudio, ResultCache
from voicenote.audio import CONTENT_TYPES, EXTENSIONS, UnsupportedFormat, encode, wav_info
from voicenote.errors import AudioNotFound
from voicenote.jobstore import JobStore, Transition, WebhookState
from voicenote.settings import StorageSettings
from voicenote.storage import AudioStore, audio_key
from voicenote.storage.base import Put

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
        return (await self.complete_many([result]))[0]

    async def complete_many(self, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The completions of ``results``, in order. The group's audio is written in one storage call and
        its cache entries in one Redis round trip; ``upload_ms`` is that call's time."""
        prepared = await asyncio.gather(*(self._prepare(result) for result in results))
        uploads = [p for p in prepared if isinstance(p, _Upload)]
        started = time.perf_counter()
        stored = await self._store.put_many([u.put for u in uploads]) if uploads else []
        upload_ms = int((time.perf_counter() - started) * 1000)
        if self._cache is not None:
            await self._cache.record_many([(u.cache_key, CachedAudio(
                audio_key=s.key, content_type=s.content_type, size_bytes=s.size, sample_rate=u.sample_rate,
                duration_ms=u.duration_ms, source_job_id=u.base["job_id"])) for u, s in zip(uploads, stored, strict=True)
                if u.cache_key])
        done = iter(zip(uploads, stored, strict=True))
        completions = []
        for p in prepared:
            if not isinstance(p, _Upload):
                completions.append(p)
                continue
            upload, obj = next(done)
            completions.append({
                **upload.base,
                "status": "succeeded",
                "completed_at": _now_ms(),
                "audio_key": obj.key,
                "audio_uri": obj.uri,
                "audio_url": await self.audio_url(upload.base["job_id"], obj.key),
                "content_type": obj.content_type,
                "size_bytes": obj.size,
                "sample_rate": upload.sample_rate,
                "duration_ms": upload.duration_ms,
                "upload_ms": upload_ms,
            })
        return completions

    async def _prepare(self, result: dict[str, Any]) -> dict[str, Any] | _Upload:
        """A finished completion (cancelled, failed, unusable audio) or the upload a success needs."""
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
        put = Put(audio_key(self._settings.key_prefix, result["job_id"], EXTENSIONS[fmt]), data, CONTENT_TYPES[fmt],
                  {"job-id": result["job_id"], "engine": result.get("engine") or "",
                   "model-version": result.get("model_version") or "", "format": fmt})
        cache_key = result.get("cache_key") if not result.get("cache_hit") else None
        return _Upload(base, put, sample_rate, duration_ms, cache_key or None)

    async def audio_url(self, job_id: str, key: str) -> str:
        """A presigned GET where storage has one, else the API's audio route (which serves local files)."""
        url = await self._store.url_for(key, self._settings.presign_expiry_seconds)
        return url if url is not None else f"{self._base}/v1/jobs/{job_id}/audio"


@dataclass(frozen=True)
class _Upload:
    base: dict[str, Any]
    put: Put
    sample_rate: int
    duration_ms: int
    cache_key: str | None


def _failed(base: dict[str, Any], code: str, message: str) -> dict[str, Any]:
    return {**base, "status": "failed", "completed_at": _now_ms(), "error_code": code, "error_message": message}


class StatusProjector:
    """Requests and completions in, forward-only job records in Redis out.

    The ``*_many`` forms apply what one fetch brought in one Redis round trip; the single forms are
    the same with one record.
    """

    def __init__(self, jobs: JobStore) -> None:
        self._jobs = jobs

    async def on_request(self, request: dict[str, Any]) -> bool:
        return (await self.on_requests([request]))[0]

    async def on_completion(self, completion: dict[str, Any]) -> bool:
        return (await self.on_completions([completion]))[0]

    async def on_requests(self, requests: Sequence[dict[str, Any]]) -> list[bool]:
        # Indexed first: a job whose completion is projected before this returns is unindexed after it.
        await self._jobs.track_pending([(r["job_id"], r["created_at"]) for r in requests])
        return await self._jobs.apply([Transition(r["job_id"], JobStatus.queued, {
            "created_at": r["created_at"], "format": r["format"], "voice": r["voice"], "priority": r["priority"],
            "batch_id": r.get("batch_id"), "webhook_url": r.get("webhook_url"), "model": r.get("model"),
            "ignored_params": (r.get("attributes") or {}).get("ignored_params"),
            # The first request of a job id wins (fields of a non-advancing transition only fill gaps).
            REQUEST_DIGEST_FIELD: request_digest(r),
            # Direct publishers may name an owner (attributes.owner); jobs without one are admin-only.
            "owner": (r.get("attributes") or {}).get("owner")}) for r in requests])

    async def on_completions(self, completions: Sequence[dict[str, Any]]) -> list[bool]:
        transitions = []
        for completion in completions:
            fields = {k: completion.get(k) for k in _PROJECTED}
            fields["cache_hit"] = int(bool(fields["cache_hit"]))
            # Kept even when the status does not move (filled as a gap): the job has its completion event.
            fields[COMPLETION_EMITTED_FIELD] = completion.get("completed_at") or _now_ms()
            transitions.append(Transition(completion["job_id"], JobStatus(completion["status"]), fields))
        # Visible at once; the dispatcher's later states (attempts >= 1) replace it, never the reverse.
        pending = [WebhookState(c["job_id"], "pending", 0) for c in completions if c.get("webhook_url")]
        moved = await self._jobs.apply(transitions, pending)
        await self._jobs.untrack_pending([c["job_id"] for c in completions])
        return moved


    async def already_completed(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` whose completion event was already emitted and projected (one round trip).

        A redelivered request can be synthesized twice (a synthesis worker killed between publishing a
        result and marking the job); its second result must not become a second completion. A job
        cancelled through the API is terminal but has no completion yet, so the mark is its own field.
        """
        if not job_ids:
            return set()
        records = await self._jobs.get_fields_many(job_ids, (COMPLETION_EMITTED_FIELD,))
        return {job_id for job_id, record in zip(job_ids, records, strict=True) if record}


COMPLETION_EMITTED_FIELD = "completion_emitted_at"


def fresh_results(results: Sequence[dict[str, Any]], emitted: set[str]) -> list[dict[str, Any]]:
    """The first result of each job not in ``emitted``, in order: one completion per job."""
    seen = set(emitted)
    fresh = []
    for result in results:
        if result["job_id"] not in seen:
            seen.add(result["job_id"])
            fresh.append(result)
    return fresh

_PROJECTED = ("created_at", "completed_at", "audio_key", "content_type", "format", "size_bytes", "duration_ms", "sample_rate",
              "engine", "model_version", "batch_size", "queued_ms", "batch_wait_ms", "engine_ms", "upload_ms", "error_code",
              "error_message", "cache_hit")
