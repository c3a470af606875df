"""Per-row sampling: each row of a batch has its own temperature, top-p, repetition penalty and
random generator, so a request's output does not depend on its batch-mates.

Order of operations (as in fish-speech): repetition penalty on the raw logits over a window of the
row's previous tokens, top-p on the untempered distribution (the most likely token always stays),
then temperature, then an exponential-race draw (argmax of p / E, E ~ Exp(1) from the row's
generator), which samples exactly from p. Temperature <= 0 means greedy (argmax after the penalty).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RowSampling:
    temperature: float
    top_p: float
    repetition_penalty: float


def apply_repetition_penalty(logits: Tensor, previous: Tensor | None, penalty: Tensor) -> Tensor:
    """logits (B, V) fp32; previous (B, W) indices into V (-1: empty slot); penalty (B,).

    Each distinct previous token is penalised once: positive logits divided, negative multiplied.
    """
    if previous is None or previous.numel() == 0:
        return logits
    valid = previous >= 0
    counts = torch.zeros_like(logits).scatter_add_(1, previous.clamp(min=0).long(), valid.to(logits.dtype))
    p = penalty.view(-1, 1)
    penalised = torch.where(logits < 0, logits * p, logits / p)
    return torch.where(counts > 0, penalised, logits)


def sample_rows(
    logits: Tensor,
    temperature: Tensor,
    top_p: Tensor,
    repetition_penalty: Tensor,
    generators: list[torch.Generator | None],
    greedy: list[bool],
    previous: Tensor | None = None,
) -> Tensor:
    """Sample one index per row. logits (B, V); temperature/top_p/repetition_penalty (B,) fp32 on
    the logits' device; ``greedy`` (host-side list) marks rows decoded by argmax, which draw no noise.

    Returns (B,) int64 on logits' device.
    """
    logits = apply_repetition_penalty(logits.float(), previous, repetition_penalty)
    out = logits.argmax(dim=-1)
    rows = [i for i, g in enumerate(greedy) if not g]
    if not rows:
        return out
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop_sorted = cum > top_p.view(-1, 1)
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(1, sorted_idx, drop_sorted)
    logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits / temperature.clamp(min=1e-5).view(-1, 1), dim=-1)
    noise = torch.stack(
        [torch.empty(logits.shape[1], device=logits.device).exponential_(generator=generators[i]) for i in rows]
    )
    rows_t = torch.tensor(rows, device=logits.device)
    drawn = (probs[rows_t] / noise).argmax(dim=-1)
    out = out.clone()
    out[rows_t] = drawn
    return out
