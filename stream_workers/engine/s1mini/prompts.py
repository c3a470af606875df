"""Prompts: (speaker, text, a voice's reference frames) -> the prompt tensor the decoder prefills.

A prompt is (1 + num_codebooks, L) int64: row 0 holds token ids, rows 1.. the codec codes of the
reference frames (zeros under text). The default voice is ``<|interleave|>`` + speaker + text; a
registered voice puts its prefix first: ``<|interleave|>`` + speaker + its prompt text, its reference
frames, ``<|im_end|>``. Voices come from :class:`~.voices.VoiceRegistry` (get a voice by name ->
prompt text + codes); the prefix built from a voice is what its LRU caches.
:func:`row_request` adds the request's sampling parameters, checked, and its frame budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..base import EngineError, SynthesisInput
from .config import S1MiniSettings
from .slots import RowRequest
from .tokenizer import INTERLEAVE
from .voices import DEFAULT_VOICE, VoiceRegistry

SPEAKER = "<|speaker:0|>"


class PromptBuilder:
    """Builds prompts with ``tokenizer`` for a model of ``num_codebooks`` codebooks of ``codebook_size``
    codes (residual codebooks); registered voices are read from ``voices_dir`` (None: the default voice only)."""

    def __init__(self, tokenizer: Any, num_codebooks: int, codebook_size: int, voices_dir: str | None = None,
                 voice_cache_size: int = 32) -> None:
        self.tokenizer = tokenizer
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.voices = VoiceRegistry(voices_dir, num_codebooks, voice_cache_size, build=self.voice_prefix)

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(SPEAKER) + self.tokenizer.encode(text)

    def voice_prefix(self, prompt_text: str, codes: np.ndarray) -> torch.Tensor:
        """[<|interleave|>] speaker + prompt text, the reference frames, <|im_end|> as (1 + num_codebooks, L)."""
        tok = self.tokenizer
        ids = [tok.token_id(INTERLEAVE)] + self.text_ids(prompt_text)
        c = torch.from_numpy(codes).long()
        c[0] = c[0].clamp(0, tok.num_semantic - 1)
        c[1:] = c[1:].clamp(0, self.codebook_size - 1)
        text_part = torch.zeros((1 + self.num_codebooks, len(ids)), dtype=torch.long)
        text_part[0] = torch.tensor(ids)
        vq = torch.cat([c[:1] + tok.semantic_begin_id, c], dim=0)
        end = torch.zeros((1 + self.num_codebooks, 1), dtype=torch.long)
        end[0, 0] = tok.im_end_id
        return torch.cat([text_part, vq, end], dim=1)

    def build(self, text: str, voice: str = DEFAULT_VOICE) -> torch.Tensor:
        """The prompt for ``text`` in ``voice`` (UnknownVoice if it is not registered)."""
        prefix = self.voices.get(voice)
        ids = self.text_ids(text)
        if prefix is None:
            ids = [self.tokenizer.token_id(INTERLEAVE)] + ids
        part = torch.zeros((1 + self.num_codebooks, len(ids)), dtype=torch.long)
        part[0] = torch.tensor(ids)
        return part if prefix is None else torch.cat([prefix, part], dim=1)


def row_request(prompt: torch.Tensor, inp: SynthesisInput, settings: S1MiniSettings, capacity: int) -> RowRequest:
    """The decoder row for ``inp``: its prompt, its frame budget within ``capacity`` KV columns, and its
    sampling parameters (the settings' defaults where the input gives none), each checked."""
    budget = capacity - prompt.shape[1]
    if budget < 1:
        raise EngineError(f"prompt of {prompt.shape[1]} tokens leaves no room in the KV capacity {capacity}",
                          code="max_tokens_exceeded")
    temperature = settings.temperature if inp.temperature is None else float(inp.temperature)
    top_p = settings.top_p if inp.top_p is None else float(inp.top_p)
    rp = settings.repetition_penalty if inp.repetition_penalty is None else float(inp.repetition_penalty)
    if not (0 <= temperature <= 2) or not (0 < top_p <= 1) or not (0 < rp <= 2):
        raise EngineError(
            f"sampling parameters out of range (temperature {temperature}, top_p {top_p}, repetition_penalty {rp})",
            code="invalid_input",
        )
    return RowRequest(prompt, min(settings.max_new_tokens, budget), temperature, top_p, rp, inp.seed)
