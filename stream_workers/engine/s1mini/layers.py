"""Transformer building blocks shared by the dual-AR model and the codec's transformer.

Parameter names follow fish-speech's layout (``wqkv``, ``wo``, ``feed_forward.w1``...) so that the
published checkpoints load without renaming. RoPE tables are rounded to bfloat16 exactly as the
reference computes them (the checkpoints were trained and served with those tables).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Rope = tuple[Tensor, Tensor]  # (cos, sin), each broadcastable to (B, S, H, head_dim), fp32


def rope_table(n_pos: int, head_dim: int, base: float) -> Tensor:
    """(n_pos, head_dim // 2, 2) cos/sin table for interleaved-pair RoPE, bf16-rounded, kept in fp32."""
    half = head_dim // 2
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32)[:half] / head_dim))
    angles = torch.arange(n_pos, dtype=torch.float32)[:, None] * inv[None, :]
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return table.to(torch.bfloat16).to(torch.float32)


def rope_rows(table: Tensor) -> Rope:
    """The table (n, D/2, 2) as full-width rows: cos (n, D) = [c0, c0, c1, c1, ...] and the signed
    sin (n, D) = [-s0, s0, -s1, s1, ...], so a rotation is ``x * cos + swap_pairs(x) * sin``."""
    cos = table[..., 0].repeat_interleave(2, dim=-1)
    sin = torch.stack([-table[..., 1], table[..., 1]], dim=-1).flatten(-2)
    return cos, sin


def rope_at(rows: Rope, index: Tensor | slice) -> Rope:
    """Rows of a full-width table for positions ``index`` ((B,) or (B, S) tensor, or a slice), shaped
    to broadcast over heads: (B, 1, 1, D) for a (B,) index, (B, S, 1, D) for (B, S), (S, 1, D) for a slice."""
    cos, sin = rows
    return cos[index].unsqueeze(-2), sin[index].unsqueeze(-2)


def apply_rope(x: Tensor, rope: Rope) -> Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (B, S, H, D) in fp32: (x0 c - x1 s, x1 c + x0 s), four ops
    (the swapped pairs times the signed sin gives exactly the same floats as the two-half form)."""
    cos, sin = rope
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (xf * cos + swapped * sin).type_as(x)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """Attention that reads each K/V once: q (B, H, S, D); k, v (B, KV, K, D) with H a multiple of KV.

    Grouped queries are packed instead of K/V expanded: the G = H / KV query heads that share a K/V
    head become G * S queries of that head, (B, KV, G * S, D), so SDPA sees plain multi-head attention
    over the cache as it is. That form has no ``enable_gqa``, so the fused kernels (memory-efficient
    with a mask, flash without) accept it on CUDA instead of the math fallback, which upcast q/k/v to
    fp32 and copied K/V once per query head. ``mask``: bool or additive float, (B or 1, 1, S, K).
    ``causal``: top-left causal (SDPA's ``is_causal``) when no mask is given.
    """
    b, h, s, d = q.shape
    kv = k.shape[1]
    if h == kv:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None and s > 1)
    g = h // kv
    if causal and mask is None and s > 1:
        mask = torch.ones(s, k.shape[2], dtype=torch.bool, device=q.device).tril().view(1, 1, s, -1)
    if mask is not None and s > 1:
        mb = mask.shape[0]
        mask = mask.unsqueeze(2).expand(mb, 1, g, s, mask.shape[-1]).reshape(mb, 1, g * s, mask.shape[-1])
    y = F.scaled_dot_product_attention(q.reshape(b, kv, g * s, d), k, v, attn_mask=mask)
    return y.reshape(b, h, s, d)


# torch >= 2.8 registers a CUDA kernel for it (one launch, fp32 inside); on the CPU it decomposes
_FUSED_RMS = getattr(torch.ops.aten, "_fused_rms_norm", None)


def rms_normalize(x: Tensor, eps: float) -> Tensor:
    """x / rms(x) over the last dimension, computed in fp32 and returned in x's dtype.

    Eager off the CPU (CUDA; and meta, where the operator counts model CUDA) this is one kernel
    (aten._fused_rms_norm) instead of seven; under torch.compile the
    plain form is traced instead, since inductor fuses it with its neighbours (it would keep the fused
    op as an opaque fallback). Both give the same floats as the upcast-compute-cast form (tested)."""
    if _FUSED_RMS is not None and x.device.type != "cpu" and not torch.compiler.is_compiling():
        return _FUSED_RMS(x, [x.shape[-1]], None, eps)[0]
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


class RMSNorm(nn.Module):
    """RMS normalisation computed in fp32, cast back, then scaled (the reference's order)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_normalize(x, self.eps) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x). After :meth:`fuse`, w1 and w3 are row views of one weight ``w13``
    and the two projections are one matmul (checkpoints keep their w1/w3 names: ``w13`` is not saved)."""

    w13: Tensor | None

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.register_buffer("w13", None, persistent=False)

    def fuse(self) -> None:
        """Concatenate w1 and w3 into ``w13`` and make them views of it (no second copy of the weights).
        Call once the weights are loaded and placed: loading or moving the module undoes the fusion."""
        if self.w13 is not None:
            return
        h = self.w1.weight.shape[0]
        w13 = torch.cat([self.w1.weight.detach(), self.w3.weight.detach()])
        self.w1.weight = nn.Parameter(w13[:h], requires_grad=False)
        self.w3.weight = nn.Parameter(w13[h:], requires_grad=False)
        self.w13 = w13

    def _apply(self, fn, recurse=True):  # .to() / .cuda() / .half(): the views would not follow
        self.w13 = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002 - nn.Module's signature
        self.w13 = None
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if self.w13 is not None:
            a, b = F.linear(x, self.w13).chunk(2, dim=-1)
            return self.w2(F.silu(a) * b)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class KVWrite(Protocol):
    """Where an attention call puts its new keys and values, and which keys and values it then reads."""

    def apply(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]: ...


class SliceWrite(NamedTuple):
    """The same columns ``[start, start + S)`` for every row; attention reads columns ``[0, start + S)``
    (the reference decoder's left-padded batch, the fast transformer's per-codebook positions)."""

    k_buf: Tensor
    v_buf: Tensor
    start: int

    def apply(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = self.start + k.shape[2]
        self.k_buf[:, :, self.start : end] = k
        self.v_buf[:, :, self.start : end] = v
        return self.k_buf[:, :, :end], self.v_buf[:, :, :end]


class ColumnScatter(NamedTuple):
    """One new column per row at the row's own column ``col`` (B, 1, 1, 1) (the slot decoder's decode
    step); attention reads columns ``[0, kvb)`` of the cache as they are (a mask hides the rest)."""

    k_buf: Tensor
    v_buf: Tensor
    col: Tensor
    kvb: int

    def apply(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        idx = self.col.expand(k.shape[0], k.shape[1], 1, k.shape[3])
        self.k_buf.scatter_(2, idx, k.to(self.k_buf.dtype))
        self.v_buf.scatter_(2, idx, v.to(self.v_buf.dtype))
        return self.k_buf[:, :, : self.kvb], self.v_buf[:, :, : self.kvb]


class SlotRowsWrite(NamedTuple):
    """Prompts joining the slot decoder: their K/V go to cache rows ``slots`` at columns ``[0, S)``;
    attention reads the prompts' own K/V (the slot rows held nothing before)."""

    k_buf: Tensor
    v_buf: Tensor
    slots: Tensor

    def apply(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        width = k.shape[2]
        self.k_buf[:, :, :width].index_copy_(0, self.slots, k.to(self.k_buf.dtype))
        self.v_buf[:, :, :width].index_copy_(0, self.slots, v.to(self.v_buf.dtype))
        return k, v


class Attention(nn.Module):
    """Grouped-query attention with an optional external KV buffer.

    ``kv``: (k_buf, v_buf) of shape (B, n_kv_heads, capacity, head_dim); the new keys/values are
    written at columns ``[start, start + S)`` (the same columns for every row: see the left-padding
    scheme of the reference decoder, ops/bench/s1mini_reference.py) and attention reads columns
    ``[0, start + S)``.
    ``mask``: bool (B or 1, 1, S, K), True where a query may attend to a key.
    """

    def __init__(
        self,
        dim: int,
        n_head: int,
        n_kv_head: int,
        head_dim: int,
        *,
        qkv_bias: bool = False,
        o_bias: bool = False,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.wqkv = nn.Linear(dim, (n_head + 2 * n_kv_head) * head_dim, bias=qkv_bias)
        self.wo = nn.Linear(n_head * head_dim, dim, bias=o_bias)
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = nn.RMSNorm(head_dim, eps=norm_eps)
            self.k_norm = nn.RMSNorm(head_dim, eps=norm_eps)

    def qkv(self, x: Tensor, rope: Rope) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of ``x`` (B, S, dim), normed and rotated: (B, heads, S, head_dim) each.

        Queries and keys are normed (per head, each with its own weight) and rotated as one tensor of
        n_head + n_kv_head heads: the same floats as doing each apart, in half the operators."""
        b, s, _ = x.shape
        nq = self.n_head + self.n_kv_head
        qkv = self.wqkv(x).view(b, s, nq + self.n_kv_head, self.head_dim)
        qk, v = qkv[:, :, :nq], qkv[:, :, nq:]
        if self.qk_norm:
            w = torch.cat([self.q_norm.weight.expand(self.n_head, -1), self.k_norm.weight.expand(self.n_kv_head, -1)])
            eps = self.q_norm.eps
            assert eps is not None  # built with norm_eps (a float) in __init__
            qk = rms_normalize(qk, eps) * w
        qk = apply_rope(qk, rope).transpose(1, 2)
        return qk[:, : self.n_head], qk[:, self.n_head :], v.transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        rope: Rope,
        mask: Tensor | None,
        kv: tuple[Tensor, Tensor] | None = None,
        start: int = 0,
        is_causal: bool = False,
        write: KVWrite | None = None,
    ) -> Tensor:
        """The one attention of the model: the reference decoder, the fast loop, the slot decoder's
        prefill and its decode step all run it; they differ only in where the new K/V go (``write``,
        default: :class:`SliceWrite` at ``start`` when ``kv`` is given) and in the mask."""
        q, k, v = self.qkv(x, rope)
        if write is None and kv is not None:
            write = SliceWrite(kv[0], kv[1], start)
        if write is not None:
            k, v = write.apply(k, v)
        return self.out(attend(q, k, v, mask, causal=is_causal))

    def out(self, y: Tensor) -> Tensor:
        """``wo`` on the attention output (B, heads, S, head_dim)."""
        b, _, s, _ = y.shape
        return self.wo(y.transpose(1, 2).reshape(b, s, self.n_head * self.head_dim))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-2))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        n_head: int,
        n_kv_head: int,
        head_dim: int,
        hidden: int,
        norm_eps: float,
        *,
        qkv_bias: bool = False,
        o_bias: bool = False,
        qk_norm: bool = False,
        layer_scale: bool = False,
    ) -> None:
        super().__init__()
        self.attention = Attention(
            dim, n_head, n_kv_head, head_dim, qkv_bias=qkv_bias, o_bias=o_bias, qk_norm=qk_norm,
            norm_eps=norm_eps,
        )
        self.feed_forward = FeedForward(dim, hidden)
        self.ffn_norm = RMSNorm(dim, norm_eps)
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.layer_scale = layer_scale
        if layer_scale:
            self.attention_layer_scale = LayerScale(dim)
            self.ffn_layer_scale = LayerScale(dim)

    def forward(
        self,
        x: Tensor,
        rope: Rope,
        mask: Tensor | None,
        kv: tuple[Tensor, Tensor] | None = None,
        start: int = 0,
        is_causal: bool = False,
        write: KVWrite | None = None,
    ) -> Tensor:
        a = self.attention(self.attention_norm(x), rope, mask, kv, start, is_causal, write)
        if self.layer_scale:
            a = self.attention_layer_scale(a)
        h = x + a
        f = self.feed_forward(self.ffn_norm(h))
        if self.layer_scale:
            f = self.ffn_layer_scale(f)
        return h + f


def init_linear_embedding(module: nn.Module, std: float = 0.02) -> None:
    """Random init used for random-weight models (tests, benchmarks)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
