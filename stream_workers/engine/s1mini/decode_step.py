"""The static decode step: one frame for every slot, with shapes fixed per (batch bucket, KV bucket).

Unlike generate.py (which grows masks and drops rows each step), everything here lives in buffers
allocated once (see slots.py): a KV cache of fixed capacity per slot, per-slot lengths, sampling
parameters, a repetition ring and the produced codes. One call of :func:`decode_step`
  1. samples codebook 0 (semantic token or the end token) from the logits the previous slow step left,
  2. runs the 10-codebook fast loop (unrolled: 9 fast steps, each sampled),
  3. records the frame and the per-slot ``done`` flags,
  4. runs the slow transformer on the frame at each slot's own position (its cache length), writing
     the new K/V at that column with one scatter and attending over ``cache[:, :, :kv_bucket]`` with a
     mask computed from the lengths.
Nothing in it reads a value back to the host, so on CUDA it is captured once per bucket in a graph,
and on the CPU it compiles with ``torch.compile(fullgraph=True)`` (tested).

Layout: a slot's tokens sit at cache columns [0, len) and its RoPE position equals the column (no
padding inside a slot). Prefill of joining rows is batched with right padding (:func:`prefill`).

Sampling is counter-based: the noise for (row seed, frame index, codebook, vocabulary entry) is a
32-bit integer hash of those four numbers (murmur3's finaliser, computed in int64 tensors with
products kept below 2**63), turned into a uniform in (0, 1) and then into an exponential race
(argmax of p / E with E = -log u, which samples exactly from p). A row's draws therefore depend only
on its seed, its own frame counter and the codebook, never on its batch-mates or its slot. Greedy
rows (temperature 0) take the argmax after the repetition penalty, exactly as generate.py does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import DualARTransformer
from .sampling import apply_repetition_penalty

_M32 = 0xFFFFFFFF
_GOLD = 0x9E3779B1
_C1 = 0x85EBCA77
_C2 = 0xC2B2AE3D


def _mul32(h: Tensor, c: int) -> Tensor:
    """(h * c) mod 2**32 for 0 <= h < 2**32 without int64 overflow (split h into 16-bit halves)."""
    lo = h & 0xFFFF
    hi = h >> 16
    return (lo * c + (((hi * (c & 0xFFFF)) & 0xFFFF) << 16)) & _M32


def fmix32(h: Tensor) -> Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values in [0, 2**32)."""
    h = h & _M32
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def row_keys(seed_lo: Tensor, seed_hi: Tensor) -> Tensor:
    """One 32-bit key per row from its 64-bit seed (given as two 32-bit halves)."""
    return fmix32(seed_lo ^ fmix32(seed_hi + _GOLD))


def uniform(row_key: Tensor, frame: Tensor, codebook: int, n: int) -> Tensor:
    """(B, n) uniforms in (0, 1): a pure function of (row key, frame index, codebook, column)."""
    k = fmix32(row_key ^ _mul32((frame * 16 + codebook) & _M32, _C1))  # (B,)
    cols = _mul32(torch.arange(n, device=row_key.device, dtype=torch.int64), _C2)  # (n,)
    h = fmix32(k.view(-1, 1) ^ cols.view(1, -1))
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def sample_static(
    logits: Tensor,
    previous: Tensor,
    temperature: Tensor,
    top_p: Tensor,
    repetition_penalty: Tensor,
    row_key: Tensor,
    frame: Tensor,
    codebook: int,
) -> Tensor:
    """One index per row, whole batch at once, no host sync. logits (B, V); previous (B, W) (-1 empty).

    Same order as sampling.sample_rows: repetition penalty, top-p on the untempered distribution (the
    most likely token always stays), temperature, exponential race. temperature <= 0: argmax.
    """
    logits = apply_repetition_penalty(logits.float(), previous, repetition_penalty)
    greedy = logits.argmax(dim=-1)
    v = logits.shape[-1]
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    first = torch.arange(v, device=logits.device) == 0
    drop_sorted = (cum > top_p.view(-1, 1)) & ~first
    drop = torch.zeros_like(drop_sorted).scatter(1, sorted_idx, drop_sorted)
    probs = torch.softmax(logits.masked_fill(drop, float("-inf")) / temperature.clamp(min=1e-5).view(-1, 1), dim=-1)
    noise = -torch.log(uniform(row_key, frame, codebook, v))
    drawn = (probs / noise).argmax(dim=-1)
    return torch.where(temperature <= 0, greedy, drawn)


class SlotState(NamedTuple):
    """Per-slot decode state (first dimension = slots); a bucket is the view ``t[:b]`` of each."""

    lens: Tensor  # (S,) int64: tokens in the slot's KV cache; the next slow step writes this column
    steps: Tensor  # (S,) int64: frames produced so far (the counter of the noise)
    limit: Tensor  # (S,) int64: max frames
    seed_lo: Tensor  # (S,) int64
    seed_hi: Tensor  # (S,) int64
    temperature: Tensor  # (S,) fp32
    top_p: Tensor  # (S,) fp32
    repetition_penalty: Tensor  # (S,) fp32
    active: Tensor  # (S,) bool
    logits: Tensor  # (S, n_sem + 1) fp32: restricted logits for the next frame's codebook 0
    hidden: Tensor  # (S, dim) model dtype: pre-norm hidden state feeding the fast transformer
    history: Tensor  # (S, 1 + n_cb, W) int64 ring of the last W frames (-1: empty), for the penalty
    codes: Tensor  # (S, n_cb, max_frames) int64: the frames produced
    done: Tensor  # (S,) bool, set by the step: the slot finished with this frame
    ended: Tensor  # (S,) bool, set by the step: ... and it finished on the end token

    def head(self, b: int) -> SlotState:
        return SlotState(*(t[:b] for t in self))


class StepConsts(NamedTuple):
    sem_begin: int
    n_sem: int
    end_token_id: int
    residual_vocab: int
    repetition_window: int  # 0: no penalty window


def _attend_decode(attn, x: Tensor, cos_sin: Tensor, k_buf: Tensor, v_buf: Tensor, col: Tensor, mask: Tensor, kvb: int) -> Tensor:
    """One query per row at per-row column ``col`` (B, 1, 1, 1); reads columns [0, kvb)."""
    b, s, _ = x.shape
    qs = attn.n_head * attn.head_dim
    q, k, v = attn.qkv(x, cos_sin)
    idx = col.expand(b, attn.n_kv_head, 1, attn.head_dim)
    k_buf.scatter_(2, idx, k.to(k_buf.dtype))
    v_buf.scatter_(2, idx, v.to(v_buf.dtype))
    y = F.scaled_dot_product_attention(
        q, k_buf[:, :, :kvb], v_buf[:, :, :kvb], attn_mask=mask, enable_gqa=attn.n_head != attn.n_kv_head
    )
    return attn.wo(y.transpose(1, 2).reshape(b, s, qs))


def slow_decode(
    model: DualARTransformer, head: Tensor, frame: Tensor, lens: Tensor, cache_k: list[Tensor], cache_v: list[Tensor], kvb: int
) -> tuple[Tensor, Tensor]:
    """The slow transformer on one frame per slot (B, 11) at column ``lens``; returns (logits, hidden)."""
    b = frame.shape[0]
    x = model.embed(frame.unsqueeze(-1))
    cos_sin = model.rope[lens].unsqueeze(1)
    cols = torch.arange(kvb, device=lens.device)
    mask = (cols.view(1, -1) <= lens.view(-1, 1)).view(b, 1, 1, kvb)
    col = lens.view(b, 1, 1, 1)
    for i, layer in enumerate(model.layers):
        h = x + _attend_decode(layer.attention, layer.attention_norm(x), cos_sin, cache_k[i], cache_v[i], col, mask, kvb)
        x = h + layer.feed_forward(layer.ffn_norm(h))
    x = x[:, -1]
    return model.logits_from_hidden(x, head), x


def decode_step(
    model: DualARTransformer,
    head: Tensor,
    st: SlotState,
    cache_k: list[Tensor],
    cache_v: list[Tensor],
    fast_k: list[Tensor],
    fast_v: list[Tensor],
    c: StepConsts,
    kvb: int,
) -> None:
    """One frame for every slot of the bucket; all results are written into ``st`` in place."""
    cfg = model.config
    n_cb = cfg.num_codebooks
    b = st.lens.shape[0]
    key = row_keys(st.seed_lo, st.seed_hi)
    hist = st.history
    prev_main = torch.where(hist[:, 0] >= 0, hist[:, 0] - c.sem_begin, hist[:, 0])
    temp, top_p, rp = st.temperature, st.top_p, st.repetition_penalty
    pick = sample_static(st.logits, prev_main, temp, top_p, rp, key, st.steps, 0)
    is_end = pick == c.n_sem
    main = torch.where(is_end, torch.full_like(pick, c.end_token_id), pick + c.sem_begin)
    codes = [torch.where(is_end, torch.zeros_like(pick), pick)]

    def fast(x: Tensor, pos: int) -> Tensor:
        cos_sin = model.fast_rope[pos : pos + 1].unsqueeze(0).expand(b, 1, -1, -1)
        for i, layer in enumerate(model.fast_layers):
            x = layer(x, cos_sin, None, (fast_k[i], fast_v[i]), pos)
        return x

    # position 0 (the slow hidden state) only fills the fast cache; position k predicts codebook k
    fast(model.fast_project_in(st.hidden).unsqueeze(1), 0)
    for k in range(1, n_cb):
        x = fast(model.fast_embeddings(codes[-1]).unsqueeze(1), k)
        flog = model.fast_output(model.fast_norm(x))[:, -1, : c.residual_vocab]
        codes.append(sample_static(flog, hist[:, k + 1], temp, top_p, rp, key, st.steps, k))
    frame = torch.stack([main] + codes, dim=1)  # (b, 1 + n_cb)
    frame = torch.where(st.active.view(-1, 1), frame, torch.zeros_like(frame))
    max_frames = st.codes.shape[2]
    at = st.steps.clamp(max=max_frames - 1).view(b, 1, 1)
    st.codes.scatter_(2, at.expand(b, n_cb, 1), frame[:, 1:, None])
    if c.repetition_window > 0:
        ring = (st.steps % hist.shape[2]).view(b, 1, 1)
        hist.scatter_(2, ring.expand(b, 1 + n_cb, 1), frame[:, :, None])
    step1 = st.steps + 1
    st.done.copy_(st.active & (is_end | (step1 >= st.limit)))
    st.ended.copy_(st.active & is_end)
    logits, hidden = slow_decode(model, head, frame, st.lens, cache_k, cache_v, kvb)
    st.logits.copy_(logits.float())
    st.hidden.copy_(hidden)
    inc = st.active.to(torch.int64)
    st.steps.add_(inc)
    st.lens.add_(inc)


def prefill(
    model: DualARTransformer,
    head: Tensor,
    prompts: list[Tensor],
    slots: Tensor,
    cache_k: list[Tensor],
    cache_v: list[Tensor],
) -> tuple[Tensor, Tensor]:
    """Run the prompts (11, L_b) of joining rows together, right-padded, and write their K/V into the
    rows ``slots`` of the caches at columns [0, L_b). Returns (restricted logits, hidden) at each
    prompt's last token. Padded columns hold junk K/V that decode overwrites before reading."""
    dev = slots.device
    n = len(prompts)
    lens = [int(p.shape[1]) for p in prompts]
    width = max(lens)
    tokens = torch.zeros((n, prompts[0].shape[0], width), dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, :, : lens[i]] = p.long()
    tokens = tokens.to(dev)
    lens_t = torch.tensor(lens, device=dev)
    cols = torch.arange(width, device=dev)
    # causal, and keys beyond a row's prompt are never visible (a padding query still sees its prompt)
    mask = (cols.view(1, 1, -1) <= cols.view(1, -1, 1)) & (cols.view(1, 1, -1) < lens_t.view(-1, 1, 1))
    mask = mask.unsqueeze(1)
    x = model.embed(tokens)
    cos_sin = model.rope[:width].unsqueeze(0).expand(n, -1, -1, -1)
    for i, layer in enumerate(model.layers):
        attn = layer.attention
        h_in = layer.attention_norm(x)
        qs = attn.n_head * attn.head_dim
        q, k, v = attn.qkv(h_in, cos_sin)
        cache_k[i][:, :, :width].index_copy_(0, slots, k.to(cache_k[i].dtype))
        cache_v[i][:, :, :width].index_copy_(0, slots, v.to(cache_v[i].dtype))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=attn.n_head != attn.n_kv_head)
        h = x + attn.wo(y.transpose(1, 2).reshape(n, width, qs))
        x = h + layer.feed_forward(layer.ffn_norm(h))
    last = x[torch.arange(n, device=dev), lens_t - 1]
    return model.logits_from_hidden(last, head), last
