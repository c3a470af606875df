"""The synthesis step: a batch of request events in, one result event per request out.

Only reads requests and writes results: the engine never waits on S3 uploads of finished audio or on
webhooks. Audio too large to ride in an event is parked in storage (claim check).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Sequence

from schemas.codec import Codecs
from schemas.errors import DecodeError
from schemas.validation import request_problems
from stream_workers.engine.base import SpeechEngine, SynthesisInput, SynthesisResult
from stream_workers.result_cache import ResultCache, cache_key
from voicenote.audio import to_wav
from voicenote.settings import StorageSettings
from voicenote.storage import AudioStore
from voicenote.storage.base import claim_key

log = logging.getLogger(__name__)


@dataclass
class Refused:
    """An input that cannot be processed at all: it goes to the dead-letter topic."""

    index: int
    reason: str
    message: str


@dataclass
class BatchOutcome:
    results: list[dict[str, Any]]  # SynthesisResult records, in input order of the accepted requests
    refused: list[Refused]


def now_ms() -> int:
    return int(time.time() * 1000)


def to_input(record: dict[str, Any]) -> SynthesisInput:
    return SynthesisInput(
        job_id=record["job_id"],
        text=record["text"],
        voice=record["voice"],
        speed=record["speed"],
        temperature=record["temperature"],
        top_p=record["top_p"],
        repetition_penalty=record["repetition_penalty"],
        seed=record["seed"],
        instructions=record["instructions"],
    )


def result_record(request: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A SynthesisResult event for ``request``, carrying forward what later stages need."""
    return {
        "job_id": request["job_id"],
        "created_at": request["created_at"],
        "synthesized_at": now_ms(),
        "format": request.get("format", "wav"),
        "webhook_url": request.get("webhook_url"),
        "batch_id": request.get("batch_id"),
        "trace_parent": request.get("trace_parent"),
        **fields,
    }


class Synthesizer:
    """Turns batches of raw request values into result records."""

    def __init__(
        self,
        engine: SpeechEngine,
        codecs: Codecs,
        store: AudioStore,
        storage: StorageSettings,
        executor: Executor | None = None,
        cache: ResultCache | None = None,
    ) -> None:
        self.engine = engine
        self._cache = cache
        self._codecs = codecs
        self._store = store
        self._storage = storage
        self._executor = executor

    async def process(self, values: Sequence[bytes | None], batch_started_ms: int, batch_wait_ms: int) -> BatchOutcome:
        refused: list[Refused] = []
        requests: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for i, value in enumerate(values):
            try:
                record = self._codecs.request.decode(value)
            except DecodeError as exc:
                refused.append(Refused(i, exc.reason, str(exc)))
                continue
            problems = request_problems(record)
            if problems and "job_id" in problems[0]:
                refused.append(Refused(i, "invalid_request", "; ".join(problems)))
            elif problems:
                results.append(result_record(record, status="failed", error_code="invalid_request", error_message="; ".join(problems)))
            else:
                requests.append(record)

        if self._cache is not None:
            requests = await self._answer_from_cache(requests, results)

        if requests:
            inputs = [to_input(r) for r in requests]
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            engine_results: list[SynthesisResult] = await loop.run_in_executor(self._executor, self.engine.synthesize_batch, inputs)
            engine_ms = int((time.perf_counter() - started) * 1000)
            for request, outcome in zip(requests, engine_results, strict=True):
                common = {
                    "engine": self.engine.name,
                    "model_version": self.engine.model_version,
                    "batch_size": len(requests),
                    "queued_ms": max(0, batch_started_ms - request["created_at"]),
                    "batch_wait_ms": batch_wait_ms,
                    "engine_ms": engine_ms,
                }
                if self._cache is not None:
                    common["cache_key"] = cache_key(request, self.engine.name, self.engine.model_version)
                if not outcome.ok:
                    assert outcome.error is not None
                    results.append(
                        result_record(request, status="failed", error_code=outcome.error.code, error_message=str(outcome.error), **common)
                    )
                    continue
                assert outcome.audio is not None
                wav = to_wav(outcome.audio, outcome.sample_rate)
                audio_fields: dict[str, Any] = {"audio": wav}
                if len(wav) > self._storage.claim_check_bytes:
                    stored = await self._store.put(claim_key(self._storage.key_prefix, request["job_id"]), wav, "audio/wav")
                    audio_fields = {"audio_ref": stored.key}
                results.append(
                    result_record(
                        request,
                        status="succeeded",
                        sample_rate=outcome.sample_rate,
                        duration_ms=int(1000 * len(outcome.audio) / outcome.sample_rate),
                        **audio_fields,
                        **common,
                    )
                )
        return BatchOutcome(results=results, refused=refused)

    async def _answer_from_cache(self, requests: list[dict[str, Any]], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append a result for every cache hit to ``results``; return the requests the engine must still do."""
        assert self._cache is not None
        misses = []
        for request in requests:
            key = cache_key(request, self.engine.name, self.engine.model_version)
            hit = await self._cache.lookup(key) if request.get("use_cache", True) else None
            if hit is None:
                misses.append(request)
                continue
            results.append(result_record(
                request, status="succeeded", audio_ref=hit.audio_key, cache_hit=True, cache_key=key,
                sample_rate=hit.sample_rate, duration_ms=hit.duration_ms, engine=self.engine.name,
                model_version=self.engine.model_version, batch_size=0,
            ))
        return misses
