"""After the engine: store the audio of a result and build the job's one completion.

The storage step is idempotent: a redelivered result writes the same bytes under the same key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

from schemas.clock import now_ms
from schemas.events import JobCompletion, SynthesisResult, carried
from stream_workers.runtime.result_cache import CachedAudio, ResultCache
from voicenote.audio import CONTENT_TYPES, EXTENSIONS, UnsupportedFormat, encode, wav_info
from voicenote.errors import AudioNotFound
from voicenote.settings import StorageSettings
from voicenote.storage import AudioStore, audio_key
from voicenote.storage.base import Put, timestamps_key
from voicenote.tracing import batch_attributes, span


class Storer:
    """A SynthesisResult event in, a JobCompletion event out.

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

    async def complete(self, result: SynthesisResult) -> JobCompletion:
        return (await self.complete_many([result]))[0]

    async def complete_many(self, results: Sequence[SynthesisResult]) -> list[JobCompletion]:
        """The completions of ``results``, in order. The group's audio is written in one storage call and
        its cache entries in one Redis round trip; ``upload_ms`` is that call's time."""
        prepared = await asyncio.gather(*(self._prepare(result) for result in results))
        uploads = [p for p in prepared if isinstance(p, _Upload)]
        started = time.perf_counter()
        # The word timestamps asked for go in the same call, beside their audio.
        extra = [u.timestamps for u in uploads if u.timestamps is not None]
        with span("voicenote.storage.upload", [u.base.trace_parent for u in uploads], batch_attributes([u.base.job_id for u in uploads])):
            written = await self._store.put_many([u.put for u in uploads] + extra) if uploads else []
        stored = written[: len(uploads)]
        upload_ms = int((time.perf_counter() - started) * 1000)
        if self._cache is not None:
            await self._cache.record_many([(u.cache_key, CachedAudio(
                audio_key=s.key, content_type=s.content_type, size_bytes=s.size, sample_rate=u.sample_rate,
                duration_ms=u.duration_ms, source_job_id=u.base.job_id)) for u, s in zip(uploads, stored, strict=True)
                if u.cache_key])
        done = iter(zip(uploads, stored, strict=True))
        completions = []
        for p in prepared:
            if not isinstance(p, _Upload):
                completions.append(p)
                continue
            upload, obj = next(done)
            completions.append(dataclasses.replace(
                upload.base,
                status="succeeded",
                completed_at=now_ms(),
                audio_key=obj.key,
                audio_uri=obj.uri,
                audio_url=await self.audio_url(upload.base.job_id, obj.key),
                content_type=obj.content_type,
                size_bytes=obj.size,
                sample_rate=upload.sample_rate,
                duration_ms=upload.duration_ms,
                upload_ms=upload_ms,
                timestamps_key=upload.timestamps.key if upload.timestamps is not None else None,
            ))
        return completions

    async def _prepare(self, result: SynthesisResult) -> JobCompletion | _Upload:
        """A finished completion (cancelled, failed, unusable audio) or the upload a success needs."""
        # Every field the two events share (status and errors are then set by the outcome).
        base = JobCompletion(completed_at=0, **carried(result, JobCompletion))
        if result.status == "cancelled":
            return dataclasses.replace(base, status="cancelled", completed_at=now_ms(),
                                       error_code=result.error_code or "cancelled",
                                       error_message=result.error_message or "the job was cancelled")
        if result.status != "succeeded":
            return _failed(base, result.error_code or "engine_error", result.error_message or "synthesis failed")
        fmt = result.format or "wav"
        try:
            if result.cache_hit:
                assert result.audio_ref is not None, "a cache hit names its stored audio"
                data = await self._store.get(result.audio_ref)
                sample_rate, duration_ms = result.sample_rate or 0, result.duration_ms or 0
            else:
                wav = result.audio
                if wav is None:
                    if result.audio_ref is None:
                        return _failed(base, "audio_missing", "the result carries neither audio nor a reference to it")
                    wav = await self._store.get(result.audio_ref)
                data = encode(wav, fmt)
                sample_rate, frames = wav_info(wav)
                duration_ms = int(1000 * frames / sample_rate) if sample_rate else 0
        except AudioNotFound as exc:
            return _failed(base, "audio_missing", f"stored audio {exc} is gone (expired or deleted); submit the request again")
        except UnsupportedFormat as exc:
            return _failed(base, exc.code, str(exc))
        put = Put(audio_key(self._settings.key_prefix, result.job_id, EXTENSIONS[fmt]), data, CONTENT_TYPES[fmt],
                  {"job-id": result.job_id, "engine": result.engine or "",
                   "model-version": result.model_version or "", "format": fmt})
        cache_key = result.cache_key if not result.cache_hit else None
        timestamps = None
        if result.word_timestamps is not None:
            timestamps = Put(timestamps_key(self._settings.key_prefix, result.job_id), result.word_timestamps.encode(),
                             "application/json", {"job-id": result.job_id, "engine": result.engine or ""})
        return _Upload(base, put, sample_rate, duration_ms, cache_key or None, timestamps)

    async def audio_url(self, job_id: str, key: str) -> str:
        """A presigned GET where storage has one, else the API's audio route (which serves local files)."""
        url = await self._store.url_for(key, self._settings.presign_expiry_seconds)
        return url if url is not None else f"{self._base}/v1/jobs/{job_id}/audio"


@dataclass(frozen=True)
class _Upload:
    base: JobCompletion
    put: Put
    sample_rate: int
    duration_ms: int
    cache_key: str | None
    timestamps: Put | None = None


def _failed(base: JobCompletion, code: str, message: str) -> JobCompletion:
    return dataclasses.replace(base, status="failed", completed_at=now_ms(), error_code=code, error_message=message)
