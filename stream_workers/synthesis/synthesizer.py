"""The synthesis step: request events in, one result event per request out.

decode -> validate -> filter (job records: already done, cancelled, past deadline) -> segment ->
engine (micro-batches of segments, see synthesis_loop.py) -> join -> result. Only reads requests and
writes results: the engine never waits on S3 uploads of finished audio or on webhooks. Audio too large
to ride in an event is parked in storage (claim check).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.clock import now_ms
from schemas.codec import Codecs
from schemas.errors import DecodeError
from schemas.events import STREAM_ATTRIBUTE, TIMESTAMPS_ATTRIBUTE, WORD_TIMESTAMPS, SpeechSegment, SynthesisRequest, carried
from schemas.events import SynthesisResult as SynthesisResultEvent
from schemas.status import JobStatus
from schemas.validation import REQUEST_DIGEST_FIELD, request_digest, request_problems, valid_job_id
from stream_workers.engine.base import EngineError, SpeechEngine, SynthesisInput, SynthesisResult
from stream_workers.engine.batches import synthesize_resilient  # split-and-retry is the engine's (engine/batches.py)
from stream_workers.runtime.result_cache import ResultCache, cache_key
from stream_workers.synthesis.segmentation import join_audio, joined_piece, segment_offsets, split_text
from voicenote import captions
from voicenote.audio import to_wav
from voicenote.captions import WordTime
from voicenote.jobstore import JobStore
from voicenote.registered_voices import is_voice_id
from voicenote.settings import StorageSettings, SynthesisSettings
from voicenote.storage import AudioStore
from voicenote.storage.base import claim_key
from voicenote.tracing import batch_attributes, batch_span, span

log = logging.getLogger(__name__)

SYNTHESIZED_FIELD = "synthesized_at"  # set on a job record once its result is on the audio topic


@dataclass
class Refused:
    """An input that cannot be processed at all: it goes to the dead-letter topic."""

    index: int
    reason: str
    message: str


@dataclass(eq=False)
class Segment:
    """One batch item: a bounded piece of one job's text."""

    job: Job
    index: int
    text: str

    def to_input(self) -> SynthesisInput:
        r = self.job.request
        return SynthesisInput(
            job_id=f"{r.job_id}#{self.index}",
            text=self.text,
            voice=r.voice,
            speed=r.speed,
            temperature=r.temperature,
            top_p=r.top_p,
            repetition_penalty=r.repetition_penalty,
            seed=r.seed,
            instructions=r.instructions,
            timestamps=self.job.wants_timestamps,
            trace_parent=r.trace_parent,
        )


@dataclass(eq=False)  # identity: two jobs are never "equal", and comparing audio arrays is costly
class Job:
    """An accepted request on its way through the engine, one segment at a time. The synthesizer's own: admission
    fills the request part, :meth:`Synthesizer.record` each segment's outcome. How the loop schedules the job (its
    source event, batches, waits, streaming progress) is the loop's, and reaches :meth:`Synthesizer.finish` as
    :class:`Timing`."""

    request: SynthesisRequest
    texts: list[str]
    admitted_ms: int = 0
    admitted_at: float = field(default_factory=time.monotonic)  # the same, on this process's monotonic clock
    audio: list[np.ndarray | None] = field(default_factory=list)
    words: list[list[WordTime] | None] = field(default_factory=list)  # per segment, when timestamps are asked for
    sample_rate: int = 0
    error: EngineError | None = None

    def __post_init__(self) -> None:
        self.audio = [None] * len(self.texts)
        self.words = [None] * len(self.texts)

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def done(self) -> bool:
        return self.error is not None or all(a is not None for a in self.audio)

    @property
    def wants_timestamps(self) -> bool:
        return wants_timestamps(self.request)

    def word_timestamps(self, engine: str) -> dict[str, str]:
        """The result's timestamp fields: the words of every segment, shifted to where the segment lies in the
        joined audio; or why there are none (never estimated). Empty when none were asked for."""
        if not self.wants_timestamps:
            return {}
        if any(w is None for w in self.words):
            return {"timestamps_unavailable": f"the {engine} engine does not give word timestamps"}
        lengths = [len(a) if a is not None else 0 for a in self.audio]
        offsets = segment_offsets(lengths, self.sample_rate)
        words = [w.shifted(at / self.sample_rate) for at, seg in zip(offsets, self.words, strict=True) for w in seg or ()]
        return {"word_timestamps": captions.dumps(words)}

    @property
    def streaming(self) -> bool:
        return (self.request.attributes or {}).get(STREAM_ATTRIBUTE) == "true"

    def finished_from(self, start: int) -> int:
        """The end of the run of finished segments that begins at ``start`` (``start`` itself when that one is not
        finished, or the job failed): streaming sends segments in order."""
        end = start
        while self.error is None and end < len(self.audio) and self.audio[end] is not None:
            end += 1
        return end

    def segment_record(self, index: int) -> SpeechSegment:
        """The SpeechSegment event of finished segment ``index``: the piece it adds to the joined audio."""
        audio = self.audio[index]
        assert audio is not None
        piece = joined_piece(audio, index, len(self.audio), self.sample_rate)
        pcm = (np.clip(piece, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        words = self.words[index] if self.wants_timestamps else None
        timestamps = None
        if words is not None:  # the segments before this one are finished (emitted in order): where it starts is known
            at = segment_offsets([len(a) for a in self.audio[: index + 1] if a is not None], self.sample_rate)[-1]
            timestamps = captions.dumps(w.shifted(at / self.sample_rate) for w in words)
        return SpeechSegment(job_id=self.job_id, index=index, count=len(self.audio), sample_rate=self.sample_rate,
                             pcm=pcm, emitted_at=now_ms(), word_timestamps=timestamps)

    def segments(self) -> list[Segment]:
        return [Segment(self, i, t) for i, t in enumerate(self.texts)]

    def past_deadline(self, now_ms: int) -> bool:
        deadline = self.request.deadline_at
        return deadline is not None and now_ms > deadline


@dataclass(frozen=True)
class Timing:
    """What the synthesis loop measured of a job, for its result record."""

    batch_size: int = 0  # the largest group the job's segments were submitted in
    started_ms: int = 0  # wall clock: its first segment into the engine
    batch_wait_ms: int = 0  # the longest its own segments waited for a slot
    engine_ms: int = 0  # from its first segment into the engine to its last result


@dataclass
class Admission:
    """What :meth:`Synthesizer.admit` made of a group of raw request values (by index)."""

    refused: list[Refused] = field(default_factory=list)
    results: list[tuple[int, SynthesisResultEvent]] = field(default_factory=list)  # ends without the engine
    skipped: list[int] = field(default_factory=list)  # finished before (a redelivery): no new result
    jobs: list[tuple[int, Job]] = field(default_factory=list)


def result_record(request: SynthesisRequest, **fields: Any) -> SynthesisResultEvent:
    """The SynthesisResult event for ``request``, carrying forward every field the two events share."""
    return SynthesisResultEvent(**carried(request, SynthesisResultEvent), synthesized_at=now_ms(), **fields)


def wants_timestamps(request: SynthesisRequest) -> bool:
    return (request.attributes or {}).get(TIMESTAMPS_ATTRIBUTE) == WORD_TIMESTAMPS


class Synthesizer:
    """The steps of synthesis that are not about concurrency: admit requests, record segment outcomes, finish a job."""

    def __init__(
        self,
        engine: SpeechEngine,
        codecs: Codecs,
        store: AudioStore,
        storage: StorageSettings,
        settings: SynthesisSettings,
        jobs: JobStore | None = None,
        cache: ResultCache | None = None,
    ) -> None:
        self.engine = engine
        self._cache = cache
        self._codecs = codecs
        self._store = store
        self._storage = storage
        self._settings = settings
        self._jobs = jobs
        # S1-mini: registered (vc_) voices come from the audio store, resolved in admit() (engine/s1mini/voices.py)
        if (attach := getattr(engine, "attach_voice_store", None)) is not None:
            attach(store)

    async def admit(self, values: Sequence[bytes | None]) -> Admission:
        """decode -> validate -> filter, with one pipelined job-record read for the whole group."""
        out = Admission()
        decoded: list[tuple[int, SynthesisRequest]] = []
        for i, value in enumerate(values):
            try:
                event = self._codecs.request.decode_event(value)
            except DecodeError as exc:
                out.refused.append(Refused(i, exc.reason, str(exc)))
                continue
            problems = request_problems(event.to_record())
            if not valid_job_id(event.job_id):  # no job to fail under that id: dead-lettered (and never projected)
                out.refused.append(Refused(i, "invalid_request", "; ".join(problems)))
            elif problems:
                out.results.append((i, result_record(event, status="failed", error_code="invalid_request",
                                                      error_message="; ".join(problems))))
            else:
                decoded.append((i, event))
        records: list[dict[str, str] | None] = [None] * len(decoded)
        if self._jobs and decoded:
            records = await self._jobs.get_fields_many([r.job_id for _, r in decoded],
                                                       ("status", SYNTHESIZED_FIELD, REQUEST_DIGEST_FIELD))
        now = now_ms()
        to_synthesize: list[tuple[int, SynthesisRequest]] = []
        for (i, request), record in zip(decoded, records, strict=True):
            status = (record or {}).get("status")
            known = (record or {}).get(REQUEST_DIGEST_FIELD)
            if known and known != (digest := request_digest(request.to_record())):
                # Another request under an existing job id: neither redone nor dropped silently.
                out.refused.append(Refused(i, "job_id_conflict", f"job {request.job_id} already belongs to request "
                                           f"digest {known}; this request's digest is {digest}"))
            elif record and (record.get(SYNTHESIZED_FIELD) or status in (JobStatus.succeeded.value, JobStatus.failed.value)):
                out.skipped.append(i)
            elif status == JobStatus.cancelled.value:
                out.results.append((i, result_record(request, status="cancelled", error_code="cancelled",
                                                      error_message="the job was cancelled before synthesis")))
            elif request.deadline_at is not None and now > request.deadline_at:
                out.results.append((i, self.deadline_result(request)))
            else:
                to_synthesize.append((i, request))
        hits = await self._from_cache([request for _, request in to_synthesize])
        for (i, request), hit in zip(to_synthesize, hits, strict=True):
            if hit is not None:
                out.results.append((i, hit))
            else:
                job = Job(request, [], admitted_ms=now)
                first = self._settings.stream_first_segment_chars if job.streaming else None
                job.texts = split_text(request.text, self._settings.max_segment_chars, first)
                job.audio = [None] * len(job.texts)
                job.words = [None] * len(job.texts)
                out.jobs.append((i, job))
        await self._resolve_voices(out)
        return out

    async def _resolve_voices(self, out: Admission) -> None:
        """Fetch the registered (``vc_``) voices the admitted jobs name before they reach the engine, whose
        ``submit`` cannot wait for the store; a job whose voice fails ends here, with the voice's error code
        (``voice_not_found``; ``voice_model_mismatch`` on an engine without registered voices)."""
        wanted = {job.request.voice for _, job in out.jobs if is_voice_id(job.request.voice)}
        if not wanted:
            return
        prepare = getattr(self.engine, "prepare_voices", None)
        if prepare is None:
            errors: dict[str, EngineError] = {v: EngineError(
                f"voice {v!r} is a registered S1-mini voice; engine {self.engine.name} cannot speak it",
                code="voice_model_mismatch") for v in wanted}
        else:
            errors = await prepare(sorted(wanted))
        if not errors:
            return
        kept: list[tuple[int, Job]] = []
        for i, job in out.jobs:
            error = errors.get(job.request.voice)
            if error is None:
                kept.append((i, job))
            else:
                out.results.append((i, result_record(job.request, status="failed", error_code=error.code,
                                                      error_message=str(error))))
        out.jobs = kept

    def deadline_result(self, request: SynthesisRequest) -> SynthesisResultEvent:
        return result_record(request, status="failed", error_code="deadline_exceeded",
                             error_message=f"the job's deadline {request.deadline_at} passed before synthesis")

    def run_batch(self, segments: Sequence[Segment]) -> list[SynthesisResult]:
        """Synthesize one batch of segments (blocking) and record each outcome on its job."""
        inputs = [s.to_input() for s in segments]
        with batch_span("voicenote.engine.batch", inputs, engine=self.engine.name):
            results = synthesize_resilient(self.engine, inputs)
        for segment, result in zip(segments, results, strict=True):
            self.record(segment, result)
        return results

    @staticmethod
    def record(segment: Segment, result: SynthesisResult) -> None:
        """Put one segment's outcome on its job (the first error ends the job)."""
        job = segment.job
        job.sample_rate = result.sample_rate
        if result.ok:
            job.audio[segment.index] = result.audio
            job.words[segment.index] = result.words
        elif job.error is None:
            job.error = result.error

    async def finish(self, job: Job, timing: Timing | None = None) -> SynthesisResultEvent:
        """The result record of a job whose segments are all done (or one of which failed); ``timing``: what the
        loop measured of it (none when the job was run outside the loop)."""
        request, timing = job.request, timing or Timing()
        common = {
            "engine": self.engine.name,
            "model_version": self.engine.model_version,
            "batch_size": timing.batch_size,
            # created_at is the publisher's clock (another host): clamped, a clock ahead of ours would make it negative.
            "queued_ms": max(0, timing.started_ms - request.created_at),
            # Measured on this process's monotonic clock, within the job's life here; the bound only makes it explicit.
            "batch_wait_ms": min(timing.batch_wait_ms, int((time.monotonic() - job.admitted_at) * 1000)),
            "engine_ms": timing.engine_ms,
        }
        if self._cache is not None:
            common["cache_key"] = cache_key(request.to_record(), self.engine.name, self.engine.model_version)
        if job.error is not None:
            return result_record(request, status="failed", error_code=job.error.code, error_message=str(job.error), **common)
        audio = join_audio([a for a in job.audio if a is not None], job.sample_rate)
        wav = to_wav(audio, job.sample_rate)
        audio_fields: dict[str, Any] = {"audio": wav}
        if len(wav) > self._storage.claim_check_bytes:
            with span("voicenote.storage.claim_check", request.trace_parent, batch_attributes([job.job_id])):
                stored = await self._store.put(claim_key(self._storage.key_prefix, job.job_id), wav, "audio/wav")
            audio_fields = {"audio_ref": stored.key}
        return result_record(request, status="succeeded", sample_rate=job.sample_rate,
                             duration_ms=int(1000 * len(audio) / job.sample_rate), **audio_fields, **common,
                             **job.word_timestamps(self.engine.name))

    async def _from_cache(self, requests: Sequence[SynthesisRequest]) -> list[SynthesisResultEvent | None]:
        """Per request, a result pointing at the stored audio of an identical earlier request, or None
        (engine needed); one cache round trip for the group."""
        found: list[SynthesisResultEvent | None] = [None] * len(requests)
        if self._cache is None:
            return found
        # A request for word timestamps is synthesized: the cache keeps audio only.
        wanted = [(i, cache_key(r.to_record(), self.engine.name, self.engine.model_version)) for i, r in enumerate(requests)
                  if r.use_cache and not wants_timestamps(r)]
        entries = await self._cache.lookup_many([key for _, key in wanted])
        hits = [(i, key, hit) for (i, key), hit in zip(wanted, entries, strict=True) if hit is not None]
        present = await asyncio.gather(*(self._store.exists(hit.audio_key) for _, _, hit in hits))
        for (i, key, hit), exists in zip(hits, present, strict=True):
            if not exists:
                # The cache is only an optimization: audio that expired or lives in another store means
                # synthesizing again, never a failed job.
                await self._cache.forget_stale(key)
                continue
            found[i] = result_record(requests[i], status="succeeded", audio_ref=hit.audio_key, cache_hit=True, cache_key=key,
                                     sample_rate=hit.sample_rate, duration_ms=hit.duration_ms, engine=self.engine.name,
                                     model_version=self.engine.model_version, batch_size=0)
        return found

    async def mark_synthesized(self, job_ids: list[str] | tuple[str, ...]) -> None:
        """Note on the job records that these results are published, so a redelivery is not redone."""
        if self._jobs and job_ids:
            await self._jobs.transition_many(job_ids, JobStatus.running, {SYNTHESIZED_FIELD: now_ms()})
