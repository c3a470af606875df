"""``S1MiniEngine``: the SpeechEngine for OpenAudio S1-mini, decoding a whole batch at once."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..base import EngineError, EngineOutOfMemory, SynthesisInput, SynthesisResult
from .checkpoint import CheckpointError, load_into, read_codec_state, read_llama_state
from .codec import CodecDecoder
from .config import DualARConfig, S1MiniSettings, s1mini_codec_config, s1mini_config
from .generate import GenerateStats, RowRequest, generate_batch
from .model import DualARTransformer
from .tokenizer import INTERLEAVE, ByteTokenizer, load_tokenizer
from .voices import DEFAULT_VOICE, VoiceRegistry

log = logging.getLogger(__name__)

SPEAKER = "<|speaker:0|>"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return _DTYPES[name]


def is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


class S1MiniEngine:
    """Batched S1-mini: text (+ optional registered reference voice) -> 44.1 kHz mono float32."""

    name = "s1mini"
    sample_rate = 44100

    def __init__(self, settings: S1MiniSettings, *, tokenizer=None) -> None:
        self.settings = s = settings
        self.device = torch.device(s.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError("S1-mini: device is cuda but CUDA is not available", code="engine_unavailable")
        self.dtype = resolve_dtype(s.dtype, self.device)
        t0 = time.perf_counter()
        if s.random_init:
            self.tokenizer = tokenizer or ByteTokenizer(
                num_semantic=(s.model_config or s1mini_config()).codebook_size
            )
            cfg = s.model_config or s1mini_config()
            if self.tokenizer.vocab_size > cfg.vocab_size:
                cfg = replace(cfg, vocab_size=self.tokenizer.vocab_size)
            self.codec_config = s.codec_config or s1mini_codec_config()
            self.model = DualARTransformer(cfg, self.tokenizer.semantic_begin_id, self.tokenizer.semantic_end_id)
            self.model.init_random(s.seed)
            self.codec = CodecDecoder(self.codec_config).init_random(s.seed)
            self.model_version = f"s1mini-random-init-{s.seed}"
        else:
            d = Path(s.checkpoint_dir)  # type: ignore[arg-type]
            if not d.is_dir():
                raise CheckpointError(f"S1-mini checkpoint directory {d} does not exist")
            if not (d / "config.json").exists():
                raise CheckpointError(f"S1-mini checkpoint {d} has no config.json")
            cfg = s.model_config or DualARConfig.from_json(d / "config.json")
            try:
                self.tokenizer = tokenizer or load_tokenizer(d)
            except (FileNotFoundError, ValueError, ImportError) as e:
                raise CheckpointError(f"S1-mini tokenizer: {e}") from e
            self.codec_config = s.codec_config or s1mini_codec_config()
            self.model = DualARTransformer(cfg, self.tokenizer.semantic_begin_id, self.tokenizer.semantic_end_id)
            load_into(self.model, read_llama_state(d), "S1-mini model (model.pth)")
            self.codec = CodecDecoder(self.codec_config)
            load_into(self.codec, read_codec_state(d / "codec.pth"), "S1-mini codec (codec.pth)")
            self.model_version = "openaudio-s1-mini-" + hashlib.sha256(
                json.dumps(cfg.to_dict(), sort_keys=True).encode()
            ).hexdigest()[:8]
        self.config = cfg
        if self.tokenizer.vocab_size > cfg.vocab_size:
            raise CheckpointError(
                f"tokenizer has {self.tokenizer.vocab_size} ids but the model's vocab_size is {cfg.vocab_size}"
            )
        if self.tokenizer.num_semantic > cfg.codebook_size:
            raise CheckpointError(
                f"tokenizer has {self.tokenizer.num_semantic} semantic tokens, model codebook_size {cfg.codebook_size}"
            )
        self.model.to(device=self.device, dtype=self.dtype).eval()
        self.codec.to(device=self.device, dtype=torch.float32).eval()
        self._step, self._fast = self.model.forward_slow, self.model.forward_fast
        if s.compile:
            self._step = torch.compile(self.model.forward_slow, dynamic=True)
            self._fast = torch.compile(self.model.forward_fast, dynamic=False)
        self.voice_registry = VoiceRegistry(
            s.voices_dir, cfg.num_codebooks, s.voice_cache_size, build=self._voice_prefix
        )
        self._lock = threading.Lock()
        self.last_stats: GenerateStats | None = None
        log.info(
            "S1-mini ready: %.0fM params, %s %s, %.1fs",
            self.model.parameter_count() / 1e6, self.device, self.dtype, time.perf_counter() - t0,
        )

    # ------------------------------------------------------------------ prompts
    def voices(self) -> list[str]:
        return self.voice_registry.names()

    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(SPEAKER) + self.tokenizer.encode(text)

    def _voice_prefix(self, prompt_text: str, codes: np.ndarray) -> torch.Tensor:
        """[<|interleave|>] speaker + prompt text, the reference frames, <|im_end|> as (11, L)."""
        tok = self.tokenizer
        ids = [tok.token_id(INTERLEAVE)] + self._text_ids(prompt_text)
        c = torch.from_numpy(codes).long()
        c[0] = c[0].clamp(0, tok.num_semantic - 1)
        c[1:] = c[1:].clamp(0, self.codec_config.codebook_size - 1)
        n_cb = self.config.num_codebooks
        text_part = torch.zeros((1 + n_cb, len(ids)), dtype=torch.long)
        text_part[0] = torch.tensor(ids)
        vq = torch.cat([c[:1] + tok.semantic_begin_id, c], dim=0)
        end = torch.zeros((1 + n_cb, 1), dtype=torch.long)
        end[0, 0] = tok.im_end_id
        return torch.cat([text_part, vq, end], dim=1)

    def build_prompt(self, text: str, voice: str = DEFAULT_VOICE) -> torch.Tensor:
        prefix = self.voice_registry.get(voice)
        ids = self._text_ids(text)
        if prefix is None:
            ids = [self.tokenizer.token_id(INTERLEAVE)] + ids
        part = torch.zeros((1 + self.config.num_codebooks, len(ids)), dtype=torch.long)
        part[0] = torch.tensor(ids)
        return part if prefix is None else torch.cat([prefix, part], dim=1)

    # ------------------------------------------------------------------ synthesis
    def _row(self, inp: SynthesisInput) -> RowRequest:
        s = self.settings
        if not inp.text or not inp.text.strip():
            raise EngineError("empty text", code="invalid_input")
        prompt = self.build_prompt(inp.text, inp.voice or DEFAULT_VOICE)
        budget = self.config.max_seq_len - prompt.shape[1]
        if budget < 1:
            raise EngineError(
                f"prompt of {prompt.shape[1]} tokens leaves no room in max_seq_len {self.config.max_seq_len}",
                code="max_tokens_exceeded",
            )
        temperature = s.temperature if inp.temperature is None else float(inp.temperature)
        top_p = s.top_p if inp.top_p is None else float(inp.top_p)
        rp = s.repetition_penalty if inp.repetition_penalty is None else float(inp.repetition_penalty)
        if not (0 <= temperature <= 2) or not (0 < top_p <= 1) or not (0 < rp <= 2):
            raise EngineError(
                f"sampling parameters out of range (temperature {temperature}, top_p {top_p}, repetition_penalty {rp})",
                code="invalid_input",
            )
        return RowRequest(prompt, min(s.max_new_tokens, budget), temperature, top_p, rp, inp.seed)

    def synthesize_batch(self, inputs: Sequence[SynthesisInput]) -> list[SynthesisResult]:
        sr = self.sample_rate
        results: list[SynthesisResult | None] = [None] * len(inputs)
        rows: list[RowRequest] = []
        where: list[int] = []
        for i, inp in enumerate(inputs):
            try:
                rows.append(self._row(inp))
                where.append(i)
            except EngineError as e:
                results[i] = SynthesisResult(inp.job_id, sr, error=e)
        if rows:
            with self._lock:
                self._run(inputs, rows, where, results)
        return [r for r in results if r is not None]

    def _run(self, inputs, rows, where, results) -> None:
        sr = self.sample_rate
        stats = GenerateStats()
        try:
            gen = generate_batch(
                self.model, rows, end_token_id=self.tokenizer.im_end_id,
                residual_vocab=self.codec_config.codebook_size, semantic_vocab=self.tokenizer.num_semantic,
                repetition_window=self.settings.repetition_window, stats=stats,
                step_fn=self._step, fast_fn=self._fast,
            )
            decode_ix = []
            for j, g in enumerate(gen):
                inp = inputs[where[j]]
                if not g.finished and self.settings.on_max_tokens == "error":
                    results[where[j]] = SynthesisResult(inp.job_id, sr, error=EngineError(
                        f"no end of speech within {rows[j].max_new_tokens} frames", code="max_tokens_exceeded"))
                elif g.codes.shape[1] == 0:
                    results[where[j]] = SynthesisResult(
                        inp.job_id, sr, error=EngineError("the model produced no audio", code="empty_audio"))
                else:
                    decode_ix.append(j)
            t0 = time.perf_counter()
            audio = self.codec.decode_rows([gen[j].codes for j in decode_ix], self.settings.codec_batch_size)
            stats.extra["codec_s"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - every failure becomes a result or an OOM for the caller
            if is_oom(e):
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise EngineOutOfMemory(f"S1-mini batch of {len(rows)} did not fit: {e}") from e
            log.exception("S1-mini batch failed")
            for i in where:
                if results[i] is None:
                    results[i] = SynthesisResult(inputs[i].job_id, sr, error=EngineError(f"S1-mini: {e}"))
            return
        self.last_stats = stats
        for j, a in zip(decode_ix, audio, strict=True):
            i = where[j]
            wav = np.clip(a.numpy().astype(np.float32, copy=False), -1.0, 1.0)
            results[i] = SynthesisResult(
                inputs[i].job_id, sr, audio=wav,
                extra={
                    "frames": float(gen[j].codes.shape[1]),
                    "audio_seconds": wav.shape[0] / sr,
                    "prompt_tokens": float(rows[j].prompt.shape[1]),
                    "batch_size": float(len(rows)),
                },
            )
