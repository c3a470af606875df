"""Transformer building blocks shared by the dual-AR model and the codec's transformer.

Parameter names follow fish-speech's layout (``wqkv``, ``wo``, ``feed_forward.w1``...) so that the
published checkpoints load without renaming. RoPE tables are rounded to bfloat16 exactly as the
reference computes them (the checkpoints were trained and served with those tables).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rope_table(n_pos: int, head_dim: int, base: float) -> Tensor:
    """(n_pos, head_dim // 2, 2) cos/sin table for interleaved-pair RoPE, bf16-rounded, kept in fp32."""
    half = head_dim // 2
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32)[:half] / head_dim))
    angles = torch.arange(n_pos, dtype=torch.float32)[:, None] * inv[None, :]
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return table.to(torch.bfloat16).to(torch.float32)


def apply_rope(x: Tensor, cos_sin: Tensor) -> Tensor:
    """Rotate pairs (x[2i], x[2i+1]). x: (B, S, H, D); cos_sin: (B, S, D/2, 2). Computed in fp32."""
    b, s, h, d = x.shape
    xf = x.float().reshape(b, s, h, d // 2, 2)
    cos = cos_sin[..., 0].float().unsqueeze(2)
    sin = cos_sin[..., 1].float().unsqueeze(2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.reshape(b, s, h, d).type_as(x)


class RMSNorm(nn.Module):
    """RMS normalisation computed in fp32, cast back, then scaled (the reference's order)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Attention(nn.Module):
    """Grouped-query attention with an optional external KV buffer.

    ``kv``: (k_buf, v_buf) of shape (B, n_kv_heads, capacity, head_dim); the new keys/values are
    written at columns ``[start, start + S)`` (the same columns for every row: see the left-padding
    scheme in generate.py) and attention reads columns ``[0, start + S)``.
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

    def qkv(self, x: Tensor, cos_sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of ``x`` (B, S, dim), normed and rotated: (B, heads, S, head_dim) each."""
        b, s, _ = x.shape
        qs, ks = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([qs, ks, ks], dim=-1)
        q = q.view(b, s, self.n_head, self.head_dim)
        k = k.view(b, s, self.n_kv_head, self.head_dim)
        v = v.view(b, s, self.n_kv_head, self.head_dim)
        if self.qk_norm:
            q = self.q_norm(q)
            k = self.k_norm(k)
        q = apply_rope(q, cos_sin).transpose(1, 2)
        k = apply_rope(k, cos_sin).transpose(1, 2)
        return q, k, v.transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        cos_sin: Tensor,
        mask: Tensor | None,
        kv: tuple[Tensor, Tensor] | None = None,
        start: int = 0,
        is_causal: bool = False,
    ) -> Tensor:
        b, s, _ = x.shape
        qs = self.n_head * self.head_dim
        q, k, v = self.qkv(x, cos_sin)
        if kv is not None:
            k_buf, v_buf = kv
            k_buf[:, :, start : start + s] = k
            v_buf[:, :, start : start + s] = v
            k = k_buf[:, :, : start + s]
            v = v_buf[:, :, : start + s]
        gqa = self.n_head != self.n_kv_head
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal and mask is None and s > 1, enable_gqa=gqa
        )
        return self.wo(y.transpose(1, 2).reshape(b, s, qs))


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
        cos_sin: Tensor,
        mask: Tensor | None,
        kv: tuple[Tensor, Tensor] | None = None,
        start: int = 0,
        is_causal: bool = False,
    ) -> Tensor:
        a = self.attention(self.attention_norm(x), cos_sin, mask, kv, start, is_causal)
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
