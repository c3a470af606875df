"""The S1-mini dual autoregressive transformer, batched.

Slow transformer: one step per audio frame (or text token). Its input at a position is the token
embedding plus, at semantic positions, the sum of the 10 codebook embeddings of that frame (scaled
by 1/sqrt(num_codebooks + 1) when ``scale_codebook_embeddings``). Its output is next-token logits
(tied to the token embedding) and the pre-norm hidden state of the last position.

Fast transformer: per frame, over the codebooks. Position 0 is the slow hidden state (projected to
``fast_dim``), position k (1..9) the embedding of codebook k-1; the output at position k predicts
codebook k. Codebook 0 is the semantic token itself, chosen by the slow transformer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from .config import DualARConfig, filled
from .layers import RMSNorm, Rope, TransformerBlock, init_linear_embedding, rope_at, rope_rows, rope_table


@dataclass
class KVCache:
    """Per-layer K/V buffers sized for a whole batch: (B, n_kv_heads, capacity, head_dim)."""

    k: list[Tensor]
    v: list[Tensor]

    @classmethod
    def allocate(
        cls, n_layer: int, batch: int, n_kv_head: int, capacity: int, head_dim: int,
        dtype: torch.dtype, device: torch.device | str,
    ) -> KVCache:
        shape = (batch, n_kv_head, capacity, head_dim)
        return cls(
            [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)],
            [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)],
        )

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def select_rows(self, rows: Tensor) -> None:
        """Keep only ``rows`` (drops finished requests from the batch)."""
        self.k = [t.index_select(0, rows) for t in self.k]
        self.v = [t.index_select(0, rows) for t in self.v]

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        return self.k[i], self.v[i]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class DualARTransformer(nn.Module):
    codebook_offsets: Tensor  # a buffer (register_buffer in __init__)

    def __init__(self, config: DualARConfig, semantic_begin_id: int, semantic_end_id: int) -> None:
        super().__init__()
        c = config
        self.config = c
        self.semantic_begin_id = int(semantic_begin_id)
        self.semantic_end_id = int(semantic_end_id)
        self.embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.codebook_embeddings = nn.Embedding(c.codebook_size * c.num_codebooks, c.dim)
        self.layers = nn.ModuleList(
            TransformerBlock(
                c.dim, c.n_head, c.n_local_heads, c.head_dim, c.intermediate_size, c.norm_eps,
                qkv_bias=c.attention_qkv_bias, o_bias=c.attention_o_bias, qk_norm=c.attention_qk_norm,
            )
            for _ in range(c.n_layer)
        )
        self.norm = RMSNorm(c.dim, c.norm_eps)
        if not c.tie_word_embeddings:
            self.output = nn.Linear(c.dim, c.vocab_size, bias=False)
        fast_dim, fast_head_dim = filled(c.fast_dim), filled(c.fast_head_dim)
        self.fast_project_in = nn.Linear(c.dim, fast_dim) if fast_dim != c.dim else nn.Identity()
        self.fast_embeddings = nn.Embedding(c.codebook_size, fast_dim)
        self.fast_layers = nn.ModuleList(
            TransformerBlock(
                fast_dim, filled(c.fast_n_head), filled(c.fast_n_local_heads), fast_head_dim,
                filled(c.fast_intermediate_size), c.norm_eps, qkv_bias=filled(c.fast_attention_qkv_bias),
                o_bias=filled(c.fast_attention_o_bias), qk_norm=filled(c.fast_attention_qk_norm),
            )
            for _ in range(c.n_fast_layer)
        )
        self.fast_norm = RMSNorm(fast_dim, c.norm_eps)
        self.fast_output = nn.Linear(fast_dim, c.codebook_size, bias=False)
        # RoPE as full-width cos / signed-sin rows (layers.rope_rows), fp32 whatever the model's dtype
        for name, (n_pos, head_dim) in {"rope": (c.max_seq_len, c.head_dim), "fast_rope": (c.num_codebooks, fast_head_dim)}.items():
            cos, sin = rope_rows(rope_table(n_pos, head_dim, c.rope_base))
            self.register_buffer(f"{name}_cos", cos, persistent=False)
            self.register_buffer(f"{name}_sin", sin, persistent=False)
        self.register_buffer(
            "codebook_offsets", torch.arange(c.num_codebooks) * c.codebook_size, persistent=False
        )

    # ------------------------------------------------------------------ set-up
    def init_random(self, seed: int = 0, std: float = 0.02) -> DualARTransformer:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        init_linear_embedding(self, std)
        torch.random.set_rng_state(gen_state)
        return self

    def new_cache(self, batch: int, capacity: int, dtype: torch.dtype, device) -> KVCache:
        c = self.config
        capacity = min(-(-capacity // 8) * 8, c.max_seq_len)
        return KVCache.allocate(c.n_layer, batch, c.n_local_heads, capacity, c.head_dim, dtype, device)

    def new_fast_cache(self, batch: int, dtype: torch.dtype, device) -> KVCache:
        c = self.config
        return KVCache.allocate(
            c.n_fast_layer, batch, filled(c.fast_n_local_heads), c.num_codebooks, filled(c.fast_head_dim), dtype, device
        )

    # ------------------------------------------------------------------ positions
    def rope_at(self, positions: Tensor | slice) -> Rope:
        """The slow transformer's RoPE rows at ``positions`` (see layers.rope_at)."""
        return rope_at((cast(Tensor, self.rope_cos), cast(Tensor, self.rope_sin)), positions)

    def fast_rope_at(self, positions: Tensor | slice) -> Rope:
        return rope_at((cast(Tensor, self.fast_rope_cos), cast(Tensor, self.fast_rope_sin)), positions)

    # ------------------------------------------------------------------ slow transformer
    def embed(self, tokens: Tensor) -> Tensor:
        """tokens: (B, 1 + num_codebooks, S) -> (B, S, dim)."""
        c = self.config
        main = tokens[:, 0]
        codes = tokens[:, 1:] + self.codebook_offsets.view(1, -1, 1)
        vq = self.codebook_embeddings(codes).sum(dim=1)  # (B, S, dim), summed over codebooks
        is_semantic = ((main >= self.semantic_begin_id) & (main <= self.semantic_end_id)).unsqueeze(-1)
        x = self.embeddings(main) + torch.where(is_semantic, vq, torch.zeros_like(vq))
        if c.scale_codebook_embeddings:
            x = torch.where(is_semantic, x / math.sqrt(c.num_codebooks + 1), x)
        return x

    def head_rows(self, ids: Tensor) -> Tensor:
        """The output-projection rows for ``ids`` (to compute only the logits generation samples from)."""
        w = self.embeddings.weight if self.config.tie_word_embeddings else self.output.weight
        return w.index_select(0, ids).contiguous()

    def logits_from_hidden(self, h: Tensor, head: Tensor | None = None) -> Tensor:
        h = self.norm(h)
        if head is not None:
            return torch.nn.functional.linear(h, head)
        if self.config.tie_word_embeddings:
            return torch.nn.functional.linear(h, self.embeddings.weight)
        return self.output(h)

    def forward_slow(
        self,
        tokens: Tensor,
        positions: Tensor,
        mask: Tensor | None,
        cache: KVCache | None = None,
        start: int = 0,
        return_all: bool = False,
        head: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the slow transformer over ``tokens`` (B, 11, S) at per-row ``positions`` (B, S).

        Returns (logits, hidden): for the last position only, (B, V) and (B, dim) pre-norm, or for
        every position with ``return_all`` ((B, S, V), (B, S, dim)). With ``head`` (rows of the output
        projection, see head_rows) the logits are only those rows' (B, len(head)).
        """
        x = self.embed(tokens)
        rope = self.rope_at(positions)
        for i, layer in enumerate(self.layers):
            kv = cache.layer(i) if cache is not None else None
            x = layer(x, rope, mask, kv, start, is_causal=mask is None)
        if not return_all:
            x = x[:, -1]
        return self.logits_from_hidden(x, head), x

    # ------------------------------------------------------------------ fast transformer
    def forward_fast(self, x: Tensor, pos: int, cache: KVCache) -> Tensor:
        """One fast step: x (B, 1, fast_dim) at codebook position ``pos``; returns (B, codebook_size)."""
        rope = self.fast_rope_at(slice(pos, pos + 1))
        for i, layer in enumerate(self.fast_layers):
            x = layer(x, rope, None, cache.layer(i), pos)
        return self.fast_output(self.fast_norm(x))[:, -1]

    def forward_fast_full(self, hidden: Tensor, codes: Tensor) -> Tensor:
        """Cache-free fast pass for checks: hidden (B, dim), codes (B, num_codebooks - 1) of codebooks
        0..8. Returns logits (B, num_codebooks, codebook_size) for positions 0..9."""
        x = torch.cat([self.fast_project_in(hidden)[:, None], self.fast_embeddings(codes)], dim=1)
        n = x.shape[1]
        rope = self.fast_rope_at(slice(0, n))
        for layer in self.fast_layers:
            x = layer(x, rope, None, None, 0, is_causal=True)
        return self.fast_output(self.fast_norm(x))

    def fuse_projections(self) -> DualARTransformer:
        """Serve every FFN's w1 and w3 as one matmul (layers.FeedForward.fuse): 2 * 28 + 2 * 4 fewer
        launches per step. Call after loading and placing the model (the slot decoder does)."""
        for layer in [*self.layers, *self.fast_layers]:
            layer.feed_forward.fuse()
        return self

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
