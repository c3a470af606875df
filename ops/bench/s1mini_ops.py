"""Operators per S1-mini decode step, counted on the ``meta`` device (no weights, no compute: quick at
real shapes). Shared by ``ops/bench/s1mini.py`` and the operator-budget test.

Two counts, both excluding views (and ``_unsafe_view``, a metadata-only reshape):
  * ``cuda_eager``: what an eager step launches on CUDA. ``F.scaled_dot_product_attention`` and
    ``aten._fused_rms_norm`` count as one operator each: on CUDA each is one fused kernel (the packed
    attention form is eligible for the memory-efficient kernel; torch registers a CUDA kernel for the
    fused RMSNorm), while on ``meta`` and the CPU they decompose.
  * ``decomposed``: every aten operator as ``meta`` runs it, those two decomposed (SDPA into its math
    form). The issue's baseline of 5,948 was counted this way; it equals what the old step ran on
    CUDA, since its boolean mask with ``enable_gqa`` sent SDPA to the math fallback there.
"""

from __future__ import annotations

import collections

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from stream_workers.engine.s1mini.config import DualARConfig, s1mini_config
from stream_workers.engine.s1mini.decode_step import decode_step
from stream_workers.engine.s1mini.model import DualARTransformer
from stream_workers.engine.s1mini.slots import SlotDecoder
from stream_workers.engine.s1mini.tokenizer import ByteTokenizer


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused and not func.is_view and func.name() != "aten::_unsafe_view":
            self.ops[func.name()] += 1
        return func(*args, **(kwargs or {}))


class _Fused(TorchFunctionMode):
    """Counts the calls that are one kernel on CUDA as one operator, and hides what they decompose into."""

    def __init__(self, counter: _Count) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = "sdpa" if func is F.scaled_dot_product_attention else "fused_rms_norm" if "_fused_rms_norm" in str(func) else None
        if name is None:
            return func(*args, **(kwargs or {}))
        self.counter.ops[name] += 1
        self.counter.paused = True
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.counter.paused = False


def count_step_ops(batch: int, cfg: DualARConfig | None = None, kv_bucket: int = 512) -> dict:
    """Operators of one decode step at ``batch`` rows (bf16, real S1-mini shapes unless ``cfg``)."""
    cfg = cfg or s1mini_config()
    tok = ByteTokenizer(num_semantic=cfg.codebook_size)
    with torch.device("meta"):
        model = DualARTransformer(cfg, tok.semantic_begin_id, tok.semantic_end_id)
    model = model.to(torch.bfloat16)
    dec = SlotDecoder(model, end_token_id=tok.im_end_id, residual_vocab=1024, slots=batch, capacity=kv_bucket, use_graphs=False)
    args = (model, dec.head, dec.state, dec.cache_k, dec.cache_v, dec.fast_k, dec.fast_v, dec.consts, kv_bucket)
    out: dict = {"batch": batch, "kv_bucket": kv_bucket}
    with torch.no_grad():
        with _Count() as c:
            decode_step(*args)
        out["decomposed"] = sum(c.ops.values())
        with _Count() as c, _Fused(c):
            decode_step(*args)
    out["cuda_eager"] = sum(c.ops.values())
    out["top"] = dict(c.ops.most_common(12))
    return out
