"""``S1MiniEngine``: OpenAudio S1-mini with continuous batching (a ContinuousEngine and a SpeechEngine).

Two threads per engine:
  * the decode thread drives a SlotDecoder (slots.py): at each step boundary it admits queued rows
    (one batched prefill), runs one static decode step for every live row, and hands rows that
    finished to the codec queue at once;
  * the codec thread decodes finished rows in batches (up to ``codec_batch_size``, whatever is
    waiting) and resolves each row's future.
``submit`` returns one future per input; ``synthesize_batch`` submits and waits. The decode thread first
runs ``SlotDecoder.warm_up`` (CUDA-graph capture on CUDA); ``ready`` turns true after it.

The engine is the threads. What it runs comes from loader.py (checkpoint, config, tokenizer -> a
:class:`~.loader.LoadedModel`) and what it decodes from prompts.py (speaker, text, a voice's reference
frames -> the prompt tensor, plus the row's checked sampling parameters).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base import ContinuousEngine, EngineError, EngineOutOfMemory, SynthesisInput, SynthesisResult
from .codec_encoder import ClipEncoderLoader
from .codec_runner import CODEC_DTYPES, CodecSpec, codec_runner
from .config import S1MiniSettings
from .loader import load_model
from .prompts import PromptBuilder, row_request
from .slots import FinishedRow, RowRequest, SlotDecoder
from .voices import DEFAULT_VOICE, StoreVoices

log = logging.getLogger(__name__)


@dataclass
class _Job:
    inp: SynthesisInput
    row: RowRequest
    future: Future
    submitted: float = field(default_factory=time.perf_counter)
    left_at_step: int = 0  # the engine's decode step count when the row left its slot


@dataclass
class EngineStats:
    steps: int = 0
    row_steps: int = 0  # sum over steps of live rows (mean live slots = row_steps / steps)
    prefills: int = 0
    codec_batches: int = 0
    codec_rows: int = 0
    # when every slot first held a row: (perf_counter, steps, row_steps), for throughput at saturation
    first_full: tuple[float, int, int] | None = None


def is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(e, oom)) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


class S1MiniEngine(ContinuousEngine):
    """Batched S1-mini: text (+ optional registered reference voice) -> 44.1 kHz mono float32."""

    name = "s1mini"
    sample_rate = 44100

    def __init__(self, settings: S1MiniSettings, *, tokenizer=None) -> None:
        self.settings = s = settings
        loaded = load_model(s, tokenizer)
        self.model, self.config, self.tokenizer = loaded.model, loaded.config, loaded.tokenizer
        self.device, self.dtype, self.model_version = loaded.device, loaded.dtype, loaded.model_version
        self.codec_config = loaded.codec_config
        t0 = time.perf_counter()
        if s.codec_dtype not in CODEC_DTYPES:
            raise ValueError(f"unknown codec dtype {s.codec_dtype!r}; use one of {', '.join(CODEC_DTYPES)}")
        self.codec_spec = CodecSpec(
            self.codec_config, str(self.device), s.codec_dtype, loaded.codec_checkpoint, s.seed, s.codec_compile,
            s.codec_threads,
        )
        self.codec_runner = codec_runner(self.codec_spec, s.codec_process)
        if s.compile_cache_dir:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(s.compile_cache_dir).resolve()))
        self.prompts = PromptBuilder(self.tokenizer, self.config.num_codebooks, self.codec_config.codebook_size,
                                     s.voices_dir, s.voice_cache_size)
        self.voice_registry = self.prompts.voices
        self.slots = s.slots or (64 if self.device.type == "cuda" else 8)
        self.decoder = SlotDecoder(
            self.model, end_token_id=self.tokenizer.im_end_id, residual_vocab=self.codec_config.codebook_size,
            semantic_vocab=self.tokenizer.num_semantic, slots=self.slots,
            capacity=min(s.kv_capacity, self.config.max_seq_len), repetition_window=s.repetition_window,
            prefill_tokens=s.prefill_tokens, use_graphs=self.device.type == "cuda" and s.cuda_graphs,
            compile=self.device.type == "cuda" if s.compile is None else s.compile, compile_backend=s.compile_backend,
        )
        self.load_s = loaded.load_s + time.perf_counter() - t0
        self.warm_up_s: float | None = None
        self.stats = EngineStats()
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._closing = False
        self._ready = threading.Event()
        self._codec_q: queue.Queue[tuple[FinishedRow, _Job] | None] = queue.Queue()
        self._decode_thread = threading.Thread(target=self._decode_loop, name="s1mini-decode", daemon=True)
        self._codec_thread = threading.Thread(target=self._codec_loop, name="s1mini-codec", daemon=True)
        self._codec_thread.start()
        self._decode_thread.start()
        log.info(
            "S1-mini loaded: %.0fM params, %s %s, %d slots, KV %d columns (%.0f MiB), %.1fs",
            self.model.parameter_count() / 1e6, self.device, self.dtype, self.slots, self.decoder.capacity,
            self.decoder.kv_bytes() / 2**20, self.load_s,
        )

    # ------------------------------------------------------------------ prompts (prompts.py)
    def voices(self) -> list[str]:
        return self.voice_registry.names()

    def attach_voice_store(self, store: Any) -> None:
        """Serve registered ``vc_`` voices from the audio store, encoding new ones (voices.StoreVoices)."""
        s = self.settings
        encoder = ClipEncoderLoader(self.codec_spec.checkpoint, self.codec_config, self.device, s.seed)
        self.voice_registry.attach_store(StoreVoices(
            store, encoder, self.config.num_codebooks, size=s.voice_cache_size, ttl_s=s.voice_ttl_s))

    async def prepare_voices(self, names: Sequence[str]) -> dict[str, EngineError]:
        """Resolve the registered voices among ``names`` before their jobs are submitted; errors by name."""
        return dict(await self.voice_registry.prepare(names))

    def build_prompt(self, text: str, voice: str = DEFAULT_VOICE) -> torch.Tensor:
        return self.prompts.build(text, voice)

    def _row(self, inp: SynthesisInput) -> RowRequest:
        if not inp.text or not inp.text.strip():
            raise EngineError("empty text", code="invalid_input")
        prompt = self.prompts.build(inp.text, inp.voice or DEFAULT_VOICE)
        return row_request(prompt, inp, self.settings, self.decoder.capacity)

    # ------------------------------------------------------------------ readiness
    @property
    def ready(self) -> bool:
        """True once the decode step is warmed up (on CUDA: every bucket captured in a graph)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    # ------------------------------------------------------------------ ContinuousEngine
    def free_slots(self) -> int:
        with self._cond:
            return max(0, self.slots - len(self.decoder.live) - len(self._pending))

    def submit(self, inputs: Sequence[SynthesisInput]) -> list[Future[SynthesisResult]]:
        futures: list[Future[SynthesisResult]] = []
        jobs: list[_Job] = []
        for inp in inputs:
            fut: Future[SynthesisResult] = Future()
            fut.set_running_or_notify_cancel()
            futures.append(fut)
            try:
                jobs.append(_Job(inp, self._row(inp), fut))
            except EngineError as e:
                fut.set_result(SynthesisResult(inp.job_id, self.sample_rate, error=e))
        if jobs:
            with self._cond:
                if self._closing:
                    for j in jobs:
                        j.future.set_result(self._error(j, EngineError("S1-mini engine is closed", code="engine_unavailable")))
                else:
                    self._pending.extend(jobs)
                    self._cond.notify_all()
        return futures

    def close(self) -> None:
        """Finish the rows in hand (queued ones included), then stop both threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._decode_thread.join()
        self._codec_thread.join()
        self.codec_runner.close()

    def synthesize_batch(self, inputs: Sequence[SynthesisInput]) -> list[SynthesisResult]:
        """Submit and wait. An out-of-memory row raises EngineOutOfMemory (the caller splits and retries)."""
        results = [f.result() for f in self.submit(inputs)]
        for r in results:
            if isinstance(r.error, EngineOutOfMemory):
                raise r.error
        return results

    # ------------------------------------------------------------------ decode thread
    def _error(self, job: _Job, e: EngineError) -> SynthesisResult:
        return SynthesisResult(job.inp.job_id, self.sample_rate, error=e)

    def _as_engine_error(self, e: BaseException, what: str) -> EngineError:
        if isinstance(e, EngineError):  # from the codec process: already coded
            return e
        if is_oom(e):
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return EngineOutOfMemory(f"S1-mini {what} did not fit: {e}")
        return EngineError(f"S1-mini {what}: {e}")

    def _decode_loop(self) -> None:
        t0 = time.perf_counter()
        try:
            self.decoder.warm_up()
        except Exception:
            # without a warm decoder nothing can run: fail every job that arrives, loudly
            log.exception("S1-mini warm-up failed")
            self._fail_all(EngineError("S1-mini warm-up failed", code="engine_unavailable"))
            return
        self.warm_up_s = time.perf_counter() - t0
        self._ready.set()
        log.info(
            "S1-mini decode ready: warm-up %.1fs (%d pairs, %d graphs, compiled: %s)", self.warm_up_s,
            len(self.decoder.warm_up_times), len(self.decoder._graphs), self.decoder.compiled,
        )
        while True:
            with self._cond:
                while not self._pending and not self.decoder.live and not self._closing:
                    self._cond.wait()
                if self._closing and not self._pending and not self.decoder.live:
                    break
                take = self._take_admissible()
            if take:
                self._admit(take)
            try:
                finished = self.decoder.step()
            except Exception as e:  # noqa: BLE001 - the live rows fail with the error, the engine goes on
                log.exception("S1-mini decode step failed")
                err = self._as_engine_error(e, f"decode step of {len(self.decoder.live)} rows")
                for job in self.decoder.abort():
                    job.future.set_result(self._error(job, err))
                continue
            if self.stats.first_full is None and self.decoder.free_slots() == 0:
                self.stats.first_full = (time.perf_counter(), self.stats.steps, self.stats.row_steps)
            self.stats.steps = self.decoder.steps_run
            self.stats.row_steps = self.decoder.row_steps
            for f in finished:
                f.tag.left_at_step = self.decoder.steps_run
                self._codec_q.put((f, f.tag))
        self._codec_q.put(None)

    def _take_admissible(self) -> list[_Job]:
        """Queued rows to admit at this step boundary (called holding the lock). An idle decoder takes
        what waits at once; a busy one admits in groups, each prefill costing about a step: at least
        ``admit_group`` rows (or every free slot), or whatever waits once the oldest has waited
        ``admit_wait_ms``."""
        free = self.decoder.free_slots()
        if not self._pending or not free:
            return []
        if self.decoder.live and not self._closing:
            group = min(self.settings.admit_group, free)
            waited = time.perf_counter() - self._pending[0].submitted
            if len(self._pending) < group and waited * 1000 < self.settings.admit_wait_ms:
                return []
        take = self._pending[:free]
        del self._pending[: len(take)]
        return take

    def _admit(self, jobs: list[_Job]) -> None:
        try:
            self.decoder.add([(j.row, j) for j in jobs])
            self.stats.prefills += 1
            return
        except Exception as e:  # noqa: BLE001 - retried row by row below, then a per-row error
            if len(jobs) == 1 or not is_oom(e):
                log.exception("S1-mini prefill of %d rows failed", len(jobs))
                err = self._as_engine_error(e, f"prefill of {len(jobs)} rows")
                for j in self._not_live(jobs):
                    j.future.set_result(self._error(j, err))
                return
        for j in self._not_live(jobs):
            self._admit([j])

    def _not_live(self, jobs: list[_Job]) -> list[_Job]:
        live = {id(r.tag) for r in self.decoder.live.values()}
        return [j for j in jobs if id(j) not in live]

    def _fail_all(self, err: EngineError) -> None:
        while True:
            with self._cond:
                jobs, self._pending = self._pending, []
                if not jobs and self._closing:
                    break
                if not jobs:
                    self._cond.wait()
                    continue
            for j in jobs:
                j.future.set_result(self._error(j, err))
        self._codec_q.put(None)

    # ------------------------------------------------------------------ codec thread
    def _codec_loop(self) -> None:
        while True:
            item = self._codec_q.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.settings.codec_batch_size:
                try:
                    nxt = self._codec_q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._codec_q.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            try:
                self._finish(batch)
            except Exception as e:  # noqa: BLE001 - no future may hang: each unresolved row gets the error
                log.exception("S1-mini codec thread failed on %d rows", len(batch))
                for _, job in batch:
                    if not job.future.done():
                        job.future.set_result(self._error(job, EngineError(f"S1-mini codec: {e}")))

    def _finish(self, batch: list[tuple[FinishedRow, _Job]]) -> None:
        sr = self.sample_rate
        to_decode: list[tuple[FinishedRow, _Job]] = []
        for f, job in batch:
            if not f.finished and self.settings.on_max_tokens == "error":
                job.future.set_result(self._error(job, EngineError(
                    f"no end of speech within {job.row.max_new_tokens} frames", code="max_tokens_exceeded")))
            elif f.codes.shape[1] == 0:
                job.future.set_result(self._error(job, EngineError("the model produced no audio", code="empty_audio")))
            else:
                to_decode.append((f, job))
        if not to_decode:
            return
        try:
            audio = self.codec_runner.decode([f.codes for f, _ in to_decode], len(to_decode))
        except Exception as e:  # noqa: BLE001 - each row of the batch gets the error as its result
            log.exception("S1-mini codec failed on %d rows", len(to_decode))
            err = self._as_engine_error(e, f"codec batch of {len(to_decode)} rows")
            for _, job in to_decode:
                job.future.set_result(self._error(job, err))
            return
        self.stats.codec_batches += 1
        self.stats.codec_rows += len(to_decode)
        now = time.perf_counter()
        for (f, job), a in zip(to_decode, audio, strict=True):
            wav = np.clip(a.numpy().astype(np.float32, copy=False), -1.0, 1.0)
            job.future.set_result(SynthesisResult(
                job.inp.job_id, sr, audio=wav,
                extra={
                    "frames": float(f.codes.shape[1]),
                    "audio_seconds": wav.shape[0] / sr,
                    "prompt_tokens": float(job.row.prompt.shape[1]),
                    "seconds_in_engine": now - job.submitted,
                    "decode_step_at_finish": float(job.left_at_step),
                },
            ))
