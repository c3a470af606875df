"""The reference decoder: batched dual-AR decoding with one KV cache sized for the batch.

Off the serving path (issue 20): the engine decodes with the slot decoder (stream_workers/engine/s1mini/
slots.py, decode_step.py). This is what that decoder is checked against (greedy slot decoding equals
it token for token: tests/engine/test_s1mini_slots.py) and what ``ops/bench/s1mini.py`` compares it with.
It moved here from ``stream_workers/engine/s1mini/generate.py``.

Padding scheme: LEFT padding. Prompts of lengths L_b are right-aligned in a (B, 11, L) block,
L = max L_b, pad_b = L - L_b. Consequences:
  * every row writes its KV entries at the same cache column at each step (prefill: columns
    [0, L); decode step t: column L + t), so the cache update is one slice for the whole batch;
  * RoPE uses per-row positions: position = column - pad_b (the first real token is at 0), so a
    row sees exactly the positions it would see alone;
  * the attention mask (B, 1, Q, K) allows key column j for row b iff j >= pad_b and j <= the
    query's column. A padding query is allowed to attend to itself only, so no softmax row is
    empty (no NaN can leak into the cache).
Rows stop on their own: on the end token (<|im_end|>) or at their own max_new_tokens. Finished rows
are dropped from the batch (cache rows removed with index_select), so stragglers do not pay for
finished rows. Under greedy decoding, batched output equals one-at-a-time output token for token
(tested); the arithmetic differs only by padding-masked terms (exact zeros) and matmul blocking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from stream_workers.engine.s1mini.model import DualARTransformer
from stream_workers.engine.s1mini.sampling import sample_rows
from stream_workers.engine.s1mini.slots import RowRequest


@dataclass
class RowResult:
    codes: Tensor  # (num_codebooks, T) int64 on CPU: the generated frames, end token excluded
    finished: bool  # True: stopped on the end token; False: hit max_new_tokens
    steps: int = 0  # decode steps this row took (frames + the end token when finished)


@dataclass
class GenerateStats:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    steps: int = 0
    row_steps: int = 0  # sum over steps of active rows
    extra: dict = field(default_factory=dict)


# hook(step, active_original_rows, restricted_logits) -> logits (test seam; None in production)
LogitsHook = Callable[[int, list[int], Tensor], Tensor]


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


@torch.inference_mode()
def generate_batch(
    model: DualARTransformer,
    rows: list[RowRequest],
    *,
    end_token_id: int,
    residual_vocab: int,
    semantic_vocab: int | None = None,
    repetition_window: int = 16,
    cache_dtype: torch.dtype | None = None,
    slow_logits_hook: LogitsHook | None = None,
    stats: GenerateStats | None = None,
    step_fn: Callable | None = None,
    fast_fn: Callable | None = None,
) -> list[RowResult]:
    """Decode all ``rows`` together. Returns one RowResult per row, in order."""
    import time

    cfg = model.config
    device = model.embeddings.weight.device
    dtype = cache_dtype or model.embeddings.weight.dtype
    n_cb = cfg.num_codebooks
    sem_begin = model.semantic_begin_id
    n_sem = semantic_vocab or (model.semantic_end_id - sem_begin + 1)
    n_sem = min(n_sem, cfg.codebook_size)
    step_fn = step_fn or model.forward_slow
    fast_fn = fast_fn or model.forward_fast

    B = len(rows)
    lens = [int(r.prompt.shape[1]) for r in rows]
    L = max(lens)
    max_new = max(r.max_new_tokens for r in rows)
    if L + max_new > cfg.max_seq_len:
        raise ValueError(f"prompt {L} + {max_new} new tokens exceeds max_seq_len {cfg.max_seq_len}")

    tokens = torch.zeros((B, 1 + n_cb, L), dtype=torch.long)
    for b, r in enumerate(rows):
        tokens[b, :, L - lens[b] :] = r.prompt.long()
    tokens = tokens.to(device)
    pad = torch.tensor([L - n for n in lens], device=device)
    cols = torch.arange(L, device=device)
    positions = (cols.view(1, -1) - pad.view(-1, 1)).clamp(min=0)
    key_ok = cols.view(1, 1, -1) >= pad.view(-1, 1, 1)  # (B, 1, K)
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool, device=device))
    eye = torch.eye(L, dtype=torch.bool, device=device)
    mask = ((causal.unsqueeze(0) & key_ok) | eye.unsqueeze(0)).unsqueeze(1)  # (B, 1, L, L)

    cache = model.new_cache(B, L + max_new, dtype, device)
    fast_cache = model.new_fast_cache(B, dtype, device)

    temps = torch.tensor([r.temperature for r in rows], dtype=torch.float32, device=device)
    top_ps = torch.tensor([r.top_p for r in rows], dtype=torch.float32, device=device)
    rps = torch.tensor([r.repetition_penalty for r in rows], dtype=torch.float32, device=device)
    greedy = [r.temperature <= 0 for r in rows]
    gens = [None if g else _make_generator(r.seed, device) for g, r in zip(greedy, rows, strict=True)]
    limits = [r.max_new_tokens for r in rows]

    # only the logits we sample from: the semantic tokens, then the end token (last slot)
    head_ids = torch.cat([torch.arange(sem_begin, sem_begin + n_sem), torch.tensor([end_token_id])]).to(device)
    head = model.head_rows(head_ids)

    t0 = time.perf_counter()
    logits, hidden = step_fn(tokens, positions, mask, cache, 0, False, head)
    if stats is not None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stats.prefill_s += time.perf_counter() - t0
    t0 = time.perf_counter()

    history = torch.full((B, 1 + n_cb, max_new), -1, dtype=torch.long, device=device)
    active = list(range(B))  # original row index of each current batch row
    results: list[RowResult | None] = [None] * B
    frames: list[list[Tensor]] = [[] for _ in range(B)]
    valid_cols = key_ok.squeeze(1)  # (B, L) grows by one column per step
    next_pos = torch.tensor(lens, device=device)

    step = 0
    while active:
        n = len(active)
        w0 = max(0, step - repetition_window)
        window = history[:, :, w0:step]  # (n, 11, W)
        # --- slow: semantic token or end token, from the restricted vocabulary
        restricted = logits.float()  # (n, n_sem + 1)
        if slow_logits_hook is not None:
            restricted = slow_logits_hook(step, list(active), restricted)
        prev_main = window[:, 0]
        prev_main = torch.where(prev_main >= 0, prev_main - sem_begin, prev_main)
        pick = sample_rows(restricted, temps, top_ps, rps, gens, greedy, prev_main)
        is_end = pick == n_sem
        main = torch.where(is_end, torch.full_like(pick, end_token_id), pick + sem_begin)
        code0 = torch.where(is_end, torch.zeros_like(pick), pick)
        # --- fast: codebooks 1..n_cb-1
        x = model.fast_project_in(hidden).unsqueeze(1)
        fast_fn(x, 0, fast_cache)
        codes = [code0]
        for k in range(1, n_cb):
            x = model.fast_embeddings(codes[-1]).unsqueeze(1)
            flog = fast_fn(x, k, fast_cache)[:, :residual_vocab]
            codes.append(sample_rows(flog, temps, top_ps, rps, gens, greedy, window[:, k + 1]))
        frame = torch.stack([main] + codes, dim=1)  # (n, 11)
        history[:, :, step] = frame
        step += 1

        # --- per-row stop (one host sync per step)
        is_end_host = is_end.tolist()
        frame_cpu = frame.cpu()
        keep: list[int] = []
        for i, orig in enumerate(active):
            if is_end_host[i]:
                results[orig] = RowResult(_stack(frames[orig], n_cb), True, step)
            else:
                frames[orig].append(frame_cpu[i, 1:])
                if step >= limits[orig]:
                    results[orig] = RowResult(_stack(frames[orig], n_cb), False, step)
                else:
                    keep.append(i)
        if stats is not None:
            stats.steps += 1
            stats.row_steps += n
        if not keep:
            break
        if len(keep) < n:
            idx = torch.tensor(keep, device=device)
            cache.select_rows(idx)
            fast_cache.select_rows(idx)
            frame, valid_cols, next_pos = frame[idx], valid_cols[idx], next_pos[idx]
            history = history[idx]
            temps, top_ps, rps = temps[idx], top_ps[idx], rps[idx]
            greedy = [greedy[i] for i in keep]
            gens = [gens[i] for i in keep]
            active = [active[i] for i in keep]
        # --- next slow step: the new frame at column L + step - 1
        col = L + step - 1
        valid_cols = torch.cat([valid_cols, torch.ones_like(valid_cols[:, :1])], dim=1)
        step_mask = valid_cols.view(len(active), 1, 1, -1)
        logits, hidden = step_fn(frame.unsqueeze(-1), next_pos.view(-1, 1), step_mask, cache, col, False, head)
        next_pos = next_pos + 1

    if stats is not None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stats.decode_s += time.perf_counter() - t0
    return [r for r in results if r is not None]


def _stack(frames: list[Tensor], n_cb: int) -> Tensor:
    if not frames:
        return torch.zeros((n_cb, 0), dtype=torch.long)
    return torch.stack(frames, dim=1)
