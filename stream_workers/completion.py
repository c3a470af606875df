"""After the engine: store the audio, emit the one completion per job, project job status.

The storage step is idempotent: a redelivered result writes the same bytes under the same key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schemas.events import JobCompletion, SynthesisRequest, SynthesisResult, carried
from schemas.status import JobStatus
from schemas.validation import REQUEST_DIGEST_FIELD, request_digest, valid_job_id
from stream_workers.result_cache import CachedAudio, ResultCache
from voicenote.audio import CONTENT_TYPES, EXTENSIONS, UnsupportedFormat, encode, wav_info
from voicenote.errors import AudioNotFound
from voicenote.jobstore import JobStore, Transition, WebhookState
from voicenote.settings import StorageSettings
from voicenote.storage import AudioStore, audio_key
from voicenote.storage.base import Put, timestamps_key
from voicenote.tracing import batch_attributes, span

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


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
                completed_at=_now_ms(),
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
            return dataclasses.replace(base, status="cancelled", completed_at=_now_ms(),
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
    return dataclasses.replace(base, status="failed", completed_at=_now_ms(), error_code=code, error_message=message)


class StatusProjector:
    """Requests and completions in, forward-only job records in Redis out.

    The ``*_many`` forms apply what one fetch brought in one Redis round trip; the single forms are
    the same with one record.
    """

    def __init__(self, jobs: JobStore) -> None:
        self._jobs = jobs

    async def on_request(self, request: SynthesisRequest) -> bool:
        return (await self.on_requests([request]))[0]

    async def on_completion(self, completion: JobCompletion) -> bool:
        return (await self.on_completions([completion]))[0]

    async def on_requests(self, requests: Sequence[SynthesisRequest]) -> list[bool]:
        """Record each request as ``queued`` and index it for the watchdog; per request, whether it moved its job.

        A request the synthesis group dead-letters is neither recorded nor indexed (issue 25, defect 5): no
        completion ever untracks it, so the watchdog would end it hours later, under an invalid id too."""
        keep = await self.projectable(requests)
        projected = [requests[i] for i in keep]
        # Indexed first: a job whose completion is projected before this returns is unindexed after it.
        await self._jobs.track_pending([(r.job_id, r.created_at) for r in projected])
        moved = dict(zip(keep, await self._jobs.apply([Transition(r.job_id, JobStatus.queued, request_fields(r))
                                                           for r in projected]), strict=True))
        return [moved.get(i, False) for i in range(len(requests))]

    async def projectable(self, requests: Sequence[SynthesisRequest]) -> list[int]:
        """The indexes of ``requests`` the synthesis group does not dead-letter (``Synthesizer.admit``'s rules): not
        those with an invalid job id, nor those whose job id already belongs to another request (``job_id_conflict``:
        the first request's digest is on the record, or came earlier in this group). One pipelined read."""
        valid = [(i, r) for i, r in enumerate(requests) if valid_job_id(r.job_id)]
        known = await self._jobs.get_fields_many([r.job_id for _, r in valid], (REQUEST_DIGEST_FIELD,)) if valid else []
        owners: dict[str, str] = {}
        keep = []
        for (i, request), record in zip(valid, known, strict=True):
            digest = request_digest(request.to_record())
            if owners.setdefault(request.job_id, (record or {}).get(REQUEST_DIGEST_FIELD) or digest) == digest:
                keep.append(i)
        if len(keep) < len(requests):
            skipped = sorted(set(range(len(requests))) - set(keep))
            log.warning("not projecting %d requests the synthesis group dead-letters (invalid job id or job_id_conflict): %s",
                        len(skipped), ", ".join(repr(requests[i].job_id)[:80] for i in skipped[:10]))
        return keep

    async def on_completions(self, completions: Sequence[JobCompletion]) -> list[bool]:
        transitions = [Transition(c.job_id, JobStatus(c.status), completion_fields(c)) for c in completions]
        # Visible at once; the dispatcher's later states (attempts >= 1) replace it, never the reverse.
        pending = [WebhookState(c.job_id, "pending", 0) for c in completions if c.webhook_url]
        with span("voicenote.redis.complete", [c.trace_parent for c in completions], batch_attributes([c.job_id for c in completions])):
            moved = await self._jobs.apply(transitions, pending)
            await self._jobs.untrack_pending([c.job_id for c in completions])
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


def fresh_results(results: Sequence[SynthesisResult], emitted: set[str]) -> list[SynthesisResult]:
    """The first result of each job not in ``emitted``, in order: one completion per job."""
    seen = set(emitted)
    fresh = []
    for result in results:
        if result.job_id not in seen:
            seen.add(result.job_id)
            fresh.append(result)
    return fresh


# The job-record fields each event fills: the one place a typed event becomes a JobStore mapping.
# A completion projects every field but these (the key, the transition itself, and what the record
# holds from the request or serves differently: the API builds its own audio URL).
# word_timestamps can be long: the record keeps only timestamps_key, where the API reads them.
_NOT_PROJECTED = frozenset({"job_id", "status", "audio_uri", "audio_url", "webhook_url", "batch_id", "trace_parent",
                            "word_timestamps"})
_PROJECTED = tuple(f.name for f in dataclasses.fields(JobCompletion) if f.name not in _NOT_PROJECTED)


def request_fields(r: SynthesisRequest) -> dict[str, Any]:
    """The job-record fields a request fills (queued)."""
    return {
        "created_at": r.created_at, "format": r.format, "voice": r.voice, "priority": r.priority,
        "batch_id": r.batch_id, "webhook_url": r.webhook_url, "model": r.model,
        "ignored_params": r.attributes.get("ignored_params"),
        # The first request of a job id wins (fields of a non-advancing transition only fill gaps).
        REQUEST_DIGEST_FIELD: request_digest(r.to_record()),
        # Direct publishers may name an owner (attributes.owner); jobs without one are admin-only.
        "owner": r.attributes.get("owner"),
    }


def completion_fields(c: JobCompletion) -> dict[str, Any]:
    """The job-record fields a completion fills (its terminal state)."""
    fields: dict[str, Any] = {name: getattr(c, name) for name in _PROJECTED}
    fields["cache_hit"] = int(bool(c.cache_hit))
    # Kept even when the status does not move (filled as a gap): the job has its completion event.
    fields[COMPLETION_EMITTED_FIELD] = c.completed_at or _now_ms()
    return fields
