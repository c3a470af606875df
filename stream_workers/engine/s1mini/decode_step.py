"""The static decode step: one frame for every slot, with shapes fixed per (batch bucket, KV bucket).

Unlike the reference decoder (ops/bench/s1mini_reference.py, which grows masks and drops rows each
step), everything here lives in buffers allocated once (see slots.py): a KV cache of fixed capacity per slot, per-slot lengths, sampling
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

Sampling is counter-based: the noise for (row key, frame index, codebook, vocabulary entry) is a
32-bit integer hash of those numbers (:func:`hash32`: xor-shift-multiply rounds whose multipliers are
below 2**31, so int64 tensors hold every product exactly), turned into a uniform in (0, 1) and then
into an exponential race (argmax of p / E with E = -log u, which samples exactly from p). The row key
is hashed from the request's seed once, at admission; the noise of all ten codebooks of a frame is
drawn in two tensor passes at the start of the step (codebook 0 over the semantic vocabulary, the nine
residual codebooks together), not one hash per codebook. A row's draws therefore depend only on its
seed, its own frame counter and the codebook, never on its batch-mates or its slot. Greedy rows
(temperature 0) take the argmax after the repetition penalty, exactly as the reference decoder does.

Operator budget: the step is written for few kernels (it is launch-bound at small batches): queries
and keys are normed and rotated as one tensor, attention reads the cache in packed-GQA form
(layers.attend, through ``layers.Attention.forward``: the one attention of the model, which the
prefill, this step and the reference decoder all run; only where K/V are written differs), the additive mask and RoPE rows are built once per step, the fast head computes only
the residual codebook's logits, and position 0 of the fast loop skips the last layer's output half
(only its K/V are read later). ``ops/bench/s1mini.py`` counts the operators on the ``meta`` device.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, cast

import torch
from torch import Tensor

from .layers import ColumnScatter, Rope, SlotRowsWrite, TransformerBlock
from .model import DualARTransformer
from .sampling import apply_repetition_penalty

_M32 = 0xFFFFFFFF
_K1 = 0x7FEB352D  # odd multipliers below 2**31: (x < 2**32) * K < 2**63, exact in int64
_K2 = 0x5BD1E995
_COLS = 0x27D4EB2F  # spreads vocabulary columns before hashing
_FRAMES = 0x165667B1


def hash32(h):
    """A 32-bit integer hash (xor-shift-multiply, two rounds) of int64 tensors or Python ints holding
    values in [0, 2**32). The same function runs on the host (row keys at admission) and in the step."""
    h = h & _M32
    h = h ^ (h >> 16)
    h = (h * _K1) & _M32
    h = h ^ (h >> 15)
    h = (h * _K2) & _M32
    return h ^ (h >> 16)


def row_key(seed: int) -> int:
    """The 32-bit key of a request's 64-bit seed (computed once, on the host, when the row joins)."""
    return hash32((seed & _M32) ^ hash32(((seed >> 32) + 0x9E3779B1) & _M32))


def frame_keys(key: Tensor, frame: Tensor, codebooks: int) -> Tensor:
    """(B, codebooks) keys for (row key, frame index, codebook)."""
    cb = torch.arange(codebooks, device=key.device, dtype=torch.int64)
    return hash32(key.view(-1, 1) ^ ((frame.view(-1, 1) * _FRAMES) & _M32) ^ hash32(cb + 1).view(1, -1))


def uniform_from_keys(keys: Tensor, n: int) -> Tensor:
    """Uniforms in (0, 1), shape keys.shape + (n,): a pure function of each key and the column."""
    cols = (torch.arange(n, device=keys.device, dtype=torch.int64) * _COLS) & _M32
    h = hash32(keys.unsqueeze(-1) ^ cols)
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def uniform(key: Tensor, frame: Tensor, codebook: int, n: int) -> Tensor:
    """(B, n) uniforms for one codebook: what the step draws for (row key, frame, codebook)."""
    return uniform_from_keys(frame_keys(key, frame, codebook + 1)[:, codebook], n)


def sample_static(
    logits: Tensor,
    previous: Tensor,
    temperature: Tensor,
    top_p: Tensor,
    repetition_penalty: Tensor,
    noise: Tensor,
) -> Tensor:
    """One index per row, whole batch at once, no host sync. logits (B, V); previous (B, W) (-1 empty);
    noise (B, V): Exp(1) draws (-log of :func:`uniform`).

    Same order as sampling.sample_rows: repetition penalty, top-p on the untempered distribution (the
    most likely token always stays), temperature, exponential race. temperature <= 0: argmax.
    Top-p keeps the sorted prefix whose cumulative probability is <= top_p (at least one token) as a
    logit cutoff: a token tied with the last kept one is kept too (sample_rows keeps one of the tie).
    """
    logits = apply_repetition_penalty(logits.float(), previous, repetition_penalty)
    greedy = logits.argmax(dim=-1)
    sorted_logits = torch.sort(logits, dim=-1, descending=True).values
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    kept = (cum <= top_p.view(-1, 1)).sum(dim=-1, keepdim=True).clamp(min=1)
    cutoff = sorted_logits.gather(1, kept - 1)
    logits = logits.masked_fill(logits < cutoff, float("-inf"))
    probs = torch.softmax(logits / temperature.clamp(min=1e-5).view(-1, 1), dim=-1)
    drawn = (probs / noise).argmax(dim=-1)
    return torch.where(temperature <= 0, greedy, drawn)


class SlotState(NamedTuple):
    """Per-slot decode state (first dimension = slots); a bucket is the view ``t[:b]`` of each."""

    lens: Tensor  # (S,) int64: tokens in the slot's KV cache; the next slow step writes this column
    steps: Tensor  # (S,) int64: frames produced so far (the counter of the noise)
    limit: Tensor  # (S,) int64: max frames
    key: Tensor  # (S,) int64: the row's 32-bit noise key (row_key of its seed)
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


def decode_mask(lens: Tensor, kvb: int, dtype: torch.dtype) -> Tensor:
    """Additive mask (B, 1, 1, kvb): 0 where column <= the row's length, -inf beyond. Built once per
    step (a bool mask would be converted to this form inside every attention call)."""
    cols = torch.arange(kvb, device=lens.device)
    return torch.where(cols.view(1, -1) <= lens.view(-1, 1), 0.0, float("-inf")).to(dtype).view(-1, 1, 1, kvb)


def slow_decode(
    model: DualARTransformer, head: Tensor, frame: Tensor, lens: Tensor, cache_k: list[Tensor], cache_v: list[Tensor], kvb: int
) -> tuple[Tensor, Tensor]:
    """The slow transformer on one frame per slot (B, 11) at column ``lens``; returns (logits, hidden)."""
    b = frame.shape[0]
    x = model.embed(frame.unsqueeze(-1))
    rope = model.rope_at(lens.view(b, 1))
    mask = decode_mask(lens, kvb, x.dtype)
    col = lens.view(b, 1, 1, 1)
    for i, layer in enumerate(cast("Iterable[TransformerBlock]", model.layers)):
        x = layer(x, rope, mask, write=ColumnScatter(cache_k[i], cache_v[i], col, kvb))
    x = x[:, -1]
    return model.logits_from_hidden(x, head), x


def _fast_kv_only(layer: TransformerBlock, x: Tensor, rope: Rope, kv: tuple[Tensor, Tensor], pos: int) -> None:
    """A layer whose output nobody reads: only write its K/V at ``pos`` (no attention, wo or FFN)."""
    _, k, v = layer.attention.qkv(layer.attention_norm(x), rope)
    kv[0][:, :, pos : pos + 1] = k
    kv[1][:, :, pos : pos + 1] = v


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
    hist = st.history
    temp, top_p, rp = st.temperature, st.top_p, st.repetition_penalty
    # the frame's noise: codebook 0 over the semantic vocabulary + end, codebooks 1..9 in one pass
    keys = frame_keys(st.key, st.steps, n_cb)
    noise0 = -torch.log(uniform_from_keys(keys[:, 0], c.n_sem + 1))
    noise_r = -torch.log(uniform_from_keys(keys[:, 1:], c.residual_vocab))
    prev_main = torch.where(hist[:, 0] >= 0, hist[:, 0] - c.sem_begin, hist[:, 0])
    pick = sample_static(st.logits, prev_main, temp, top_p, rp, noise0)
    is_end = pick == c.n_sem
    main = torch.where(is_end, c.end_token_id, pick + c.sem_begin)
    codes = [torch.where(is_end, 0, pick)]

    fast_w = model.fast_output.weight[: c.residual_vocab]  # only the residual codebook's logits
    last = len(model.fast_layers) - 1
    # position 0 (the slow hidden state) only fills the fast cache; position k predicts codebook k
    x = model.fast_project_in(st.hidden).unsqueeze(1)
    rope = model.fast_rope_at(slice(0, 1))
    for i, layer in enumerate(cast("Iterable[TransformerBlock]", model.fast_layers)):
        if i == last:
            _fast_kv_only(layer, x, rope, (fast_k[i], fast_v[i]), 0)
        else:
            x = layer(x, rope, None, (fast_k[i], fast_v[i]), 0)
    for k in range(1, n_cb):
        x = model.fast_embeddings(codes[-1]).unsqueeze(1)
        rope = model.fast_rope_at(slice(k, k + 1))
        for i, layer in enumerate(cast("Iterable[TransformerBlock]", model.fast_layers)):
            x = layer(x, rope, None, (fast_k[i], fast_v[i]), k)
        flog = torch.nn.functional.linear(model.fast_norm(x[:, -1]), fast_w)
        codes.append(sample_static(flog, hist[:, k + 1], temp, top_p, rp, noise_r[:, k - 1]))
    frame = torch.stack([main] + codes, dim=1)  # (b, 1 + n_cb)
    frame = torch.where(st.active.view(-1, 1), frame, 0)
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
    st.logits.copy_(logits)
    st.hidden.copy_(hidden)
    inc = st.active.to(torch.int64)
    st.steps.add_(inc)
    st.lens.add_(inc)


def prefill(
    model: DualARTransformer,
    head: Tensor,
    tokens: Tensor,
    lens: Tensor,
    slots: Tensor,
    cache_k: list[Tensor],
    cache_v: list[Tensor],
) -> tuple[Tensor, Tensor]:
    """Run the prompts of joining rows together: ``tokens`` (n, 11, width) right-padded on the device,
    ``lens`` (n,) their lengths; write their K/V into the rows ``slots`` of the caches at columns
    [0, width). Returns (restricted logits, hidden) at each prompt's last token. Padded columns hold
    junk K/V that decode overwrites before reading."""
    n, _, width = tokens.shape
    cols = torch.arange(width, device=tokens.device)
    # causal, and keys beyond a row's prompt are never visible (a padding query still sees its prompt)
    mask = (cols.view(1, 1, -1) <= cols.view(1, -1, 1)) & (cols.view(1, 1, -1) < lens.view(-1, 1, 1))
    mask = mask.unsqueeze(1)
    x = model.embed(tokens)
    rope = model.rope_at(slice(0, width))
    for i, layer in enumerate(cast("Iterable[TransformerBlock]", model.layers)):
        x = layer(x, rope, mask, write=SlotRowsWrite(cache_k[i], cache_v[i], slots))
    last = x[torch.arange(n, device=tokens.device), lens - 1]
    return model.logits_from_hidden(last, head), last
