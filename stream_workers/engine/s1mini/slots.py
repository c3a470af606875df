"""Slot scheduling around the static decode step (decode_step.py): the engine's continuous batching.

``SlotDecoder`` owns buffers for ``slots`` rows allocated once: the slow KV cache at fixed
``capacity`` columns per slot, the fast cache, and the per-slot state. It is synchronous and
single-threaded (the engine's decode thread drives it; tests drive it step by step):
  * ``add(rows)``: joining rows take the lowest free slots and get one batched prefill;
  * ``step()``: one frame for every live row, then returns the rows that finished with it. Their
    slots are free at once;
  * rows are kept in the lowest slots (a row in a high slot moves down when that shrinks the bucket),
    so a step runs on the smallest batch bucket (1, 2, 4, ... 64) covering the live rows, and attends
    over the smallest KV bucket (powers of two from ``kv_min`` up to ``capacity``) covering the longest
    live row. One step = one graph replay on CUDA after ``warm_up()`` captured every (bucket, KV
    bucket) pair; eager otherwise (CPU).
The only host sync per step is reading the ``done`` flags after it (outside the captured step).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .decode_step import SlotState, StepConsts, decode_step, prefill, row_key
from .model import DualARTransformer

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class RowRequest:
    """One row to decode: its prompt, frame budget and sampling parameters."""

    prompt: Tensor  # (1 + num_codebooks, L) int, column 0 row = token ids, rows 1.. = codes
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 0.8
    repetition_penalty: float = 1.0
    seed: int | None = None



def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} rows exceed the largest bucket {buckets[-1]}")


def kv_buckets(capacity: int, smallest: int = 128) -> tuple[int, ...]:
    out, b = [], smallest
    while b < capacity:
        out.append(b)
        b *= 2
    return (*out, capacity)


@dataclass
class _Live:
    tag: Any
    prompt_len: int
    limit: int
    steps: int = 0

    @property
    def length(self) -> int:
        return self.prompt_len + self.steps


@dataclass
class FinishedRow:
    tag: Any
    codes: Tensor  # (num_codebooks, T) int64 on the CPU, the end frame excluded
    finished: bool  # stopped on the end token (else: hit its max_new_tokens)
    steps: int


class SlotDecoder:
    def __init__(
        self,
        model: DualARTransformer,
        *,
        end_token_id: int,
        residual_vocab: int,
        semantic_vocab: int | None = None,
        slots: int = 64,
        capacity: int = 2048,
        repetition_window: int = 16,
        prefill_tokens: int = 8192,
        kv_min: int = 128,
        use_graphs: bool | None = None,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        cfg = model.config
        self.model = model.fuse_projections()
        dev = self.device = model.embeddings.weight.device
        dtype = model.embeddings.weight.dtype
        if capacity > cfg.max_seq_len:
            raise ValueError(f"capacity {capacity} exceeds max_seq_len {cfg.max_seq_len}")
        self.buckets = tuple(b for b in BATCH_BUCKETS if b < slots) + (slots,)
        self.slots = slots
        self.capacity = capacity
        self.kv_buckets = kv_buckets(capacity, min(kv_min, capacity))
        self.prefill_tokens = prefill_tokens
        n_sem = min(semantic_vocab or (model.semantic_end_id - model.semantic_begin_id + 1), cfg.codebook_size)
        self.consts = StepConsts(model.semantic_begin_id, n_sem, end_token_id, residual_vocab, repetition_window)
        head_ids = torch.cat([torch.arange(model.semantic_begin_id, model.semantic_begin_id + n_sem), torch.tensor([end_token_id])])
        with torch.no_grad():
            self.head = model.head_rows(head_ids.to(dev))
            cache = model.new_cache(slots, capacity, dtype, dev)
            fast = model.new_fast_cache(slots, dtype, dev)
            n_cb = cfg.num_codebooks

            def z(*shape, dt=torch.int64):
                return torch.zeros(shape, dtype=dt, device=dev)

            self.state = SlotState(
                lens=z(slots), steps=z(slots), limit=z(slots), key=z(slots),
                temperature=z(slots, dt=torch.float32), top_p=z(slots, dt=torch.float32),
                repetition_penalty=z(slots, dt=torch.float32), active=z(slots, dt=torch.bool),
                logits=z(slots, n_sem + 1, dt=torch.float32), hidden=z(slots, cfg.dim, dt=dtype),
                history=torch.full((slots, 1 + n_cb, max(1, repetition_window)), -1, dtype=torch.int64, device=dev),
                codes=z(slots, n_cb, capacity), done=z(slots, dt=torch.bool), ended=z(slots, dt=torch.bool),
            )
        self.cache_k, self.cache_v = cache.k, cache.v
        self.fast_k, self.fast_v = fast.k, fast.v
        self.live: dict[int, _Live] = {}
        self.use_graphs = dev.type == "cuda" if use_graphs is None else use_graphs
        self._graphs: dict[tuple[int, int], Any] = {}
        self._step_fn: Callable = decode_step
        self.compiled = compile
        if compile:
            # One graph per KV bucket with the batch dimension symbolic (plus batch 1, which dynamo
            # specialises): len(kv_buckets) * 2 compiles instead of one per (batch, KV) pair. The
            # recompile limit (8 by default) is raised to the pair count so that no bucket can ever
            # hit it: before, the ninth pair failed warm-up and the engine never became ready.
            pairs = len(self.buckets) * len(self.kv_buckets)
            dyn = torch._dynamo.config
            dyn.recompile_limit = max(dyn.recompile_limit, pairs)
            dyn.accumulated_recompile_limit = max(dyn.accumulated_recompile_limit, 4 * pairs)
            self._step_fn = torch.compile(decode_step, fullgraph=True, dynamic=None, backend=compile_backend)
        self.warm_up_times: dict[tuple[int, int], dict[str, float]] = {}
        self._runs: dict[tuple[int, int], Callable[[], None]] = {}  # the step on each pair's views, built once
        self.steps_run = 0
        self.row_steps = 0

    # ------------------------------------------------------------------ capacity
    def free_slots(self) -> int:
        return self.slots - len(self.live)

    def fits(self, prompt_len: int, max_new: int) -> bool:
        return prompt_len + max_new <= self.capacity

    def kv_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.cache_k + self.cache_v)

    # ------------------------------------------------------------------ the step
    def _views(self, b: int, kvb: int) -> Callable[[], None]:
        st = self.state.head(b)
        ck, cv = [k[:b] for k in self.cache_k], [v[:b] for v in self.cache_v]
        fk, fv = [k[:b] for k in self.fast_k], [v[:b] for v in self.fast_v]
        if self.compiled and b > 1:
            for t in (*st, *ck, *cv, *fk, *fv):
                torch._dynamo.maybe_mark_dynamic(t, 0)
        fn, model, head, consts = self._step_fn, self.model, self.head, self.consts

        def run() -> None:
            fn(model, head, st, ck, cv, fk, fv, consts, kvb)

        return run

    def _run(self, b: int, kvb: int) -> Callable[[], None]:
        """The step on the (b, kvb) views, built once per pair (the buffers never move): the step path
        does not rebuild views or re-mark dynamic dimensions every frame."""
        run = self._runs.get((b, kvb))
        if run is None:
            run = self._runs[(b, kvb)] = self._views(b, kvb)
        return run

    @torch.no_grad()
    def warm_up(self) -> None:
        """Make every (batch bucket, KV bucket) pair ready, with every slot idle (so no live row changes):
        compiled (``compile``), then captured in a CUDA graph (``use_graphs``); eagerly, run each batch
        bucket once (allocator, kernels). ``warm_up_times`` records the seconds per pair: the first run
        (compile, when compiling) and the capture."""
        if self.live:
            raise RuntimeError("warm_up must run before any row is added")
        if not self.use_graphs and not self.compiled:
            for b in self.buckets:
                self._run(b, self.kv_buckets[0])()
            return
        pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        side = torch.cuda.Stream(self.device) if self.use_graphs else None
        for b in self.buckets:
            for kvb in self.kv_buckets:
                run = self._run(b, kvb)
                times: dict[str, float] = {}
                t0 = time.perf_counter()
                if side is None:
                    run()
                    times["first_run_s"] = time.perf_counter() - t0
                    self.warm_up_times[(b, kvb)] = times
                    continue
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    run()
                    torch.cuda.synchronize(self.device)
                    times["first_run_s"] = time.perf_counter() - t0
                    run()
                torch.cuda.current_stream(self.device).wait_stream(side)
                t1 = time.perf_counter()
                g = torch.cuda.CUDAGraph()
                # every graph writes its results into the slot buffers, so its intermediates are dead
                # when it ends and one pool serves all graphs whatever order they replay in
                with torch.cuda.graph(g, pool=pool):
                    run()
                torch.cuda.synchronize(self.device)
                times["capture_s"] = time.perf_counter() - t1
                self._graphs[(b, kvb)] = g
                self.warm_up_times[(b, kvb)] = times
        if self.use_graphs:
            torch.cuda.synchronize(self.device)

    def _bucket(self) -> tuple[int, int]:
        top = max(self.live) + 1
        need = max(r.length for r in self.live.values()) + 1
        kvb = next(k for k in self.kv_buckets if k >= need)
        return bucket_for(top, self.buckets), kvb

    @torch.no_grad()
    def step(self) -> list[FinishedRow]:
        """One frame for every live row; returns the rows that finished (their slots are free)."""
        if not self.live:
            return []
        b, kvb = self._bucket()
        g = self._graphs.get((b, kvb))
        if g is not None:
            g.replay()
        else:
            self._run(b, kvb)()
        self.steps_run += 1
        self.row_steps += len(self.live)
        # the step's one host sync: both flag rows in one copy, read as Python lists
        done_flags, ended_flags = torch.stack([self.state.done[:b], self.state.ended[:b]]).tolist()
        for r in self.live.values():
            r.steps += 1
        done = [s for s in self.live if done_flags[s]]
        if not done:
            return []
        out: list[FinishedRow] = []
        idx = torch.tensor(done, device=self.device)
        codes = self.state.codes.index_select(0, idx).cpu()
        for j, s in enumerate(done):
            r = self.live.pop(s)
            ended = bool(ended_flags[s])
            n = r.steps - 1 if ended else r.steps
            out.append(FinishedRow(r.tag, codes[j, :, :n].clone(), ended, r.steps))
        self.state.active.index_fill_(0, idx, False)
        self.state.lens.index_fill_(0, idx, 0)
        self._compact()
        return out

    @torch.no_grad()
    def abort(self) -> list[Any]:
        """Drop every live row (after a failed step); returns their tags."""
        tags = [r.tag for r in self.live.values()]
        self.live.clear()
        self.state.active.fill_(False)
        self.state.lens.fill_(0)
        return tags

    def _compact(self) -> None:
        """Move rows out of slots above the bucket that the live count needs."""
        if not self.live:
            return
        nb = bucket_for(len(self.live), self.buckets)
        movers = sorted(s for s in self.live if s >= nb)
        if not movers:
            return
        holes = [s for s in range(nb) if s not in self.live][: len(movers)]
        src = torch.tensor(movers, device=self.device)
        dst = torch.tensor(holes, device=self.device)
        width = max(self.live[s].length for s in movers)
        for t in self.cache_k + self.cache_v:
            part = t[:, :, :width]
            part.index_copy_(0, dst, part.index_select(0, src))
        for t in self.state:
            t.index_copy_(0, dst, t.index_select(0, src))
        self.state.active.index_fill_(0, src, False)
        self.state.lens.index_fill_(0, src, 0)
        for s, d in zip(movers, holes, strict=True):
            self.live[d] = self.live.pop(s)

    # ------------------------------------------------------------------ joining rows
    @torch.no_grad()
    def add(self, rows: list[tuple[RowRequest, Any]]) -> None:
        """Give each (row, tag) a slot and prefill them together (in chunks of ``prefill_tokens``).
        Raises ValueError when there are not enough free slots or a row does not fit the capacity."""
        if len(rows) > self.free_slots():
            raise ValueError(f"{len(rows)} rows for {self.free_slots()} free slots")
        for r, _ in rows:
            if not self.fits(int(r.prompt.shape[1]), r.max_new_tokens):
                raise ValueError(f"prompt {r.prompt.shape[1]} + {r.max_new_tokens} frames exceeds the KV capacity {self.capacity}")
        free = iter(s for s in range(self.slots) if s not in self.live)
        chunk: list[tuple[int, RowRequest, Any]] = []
        width = 0
        for r, tag in rows:
            w = max(width, int(r.prompt.shape[1]))
            if chunk and w * (len(chunk) + 1) > self.prefill_tokens:
                self._prefill(chunk)
                chunk, w = [], int(r.prompt.shape[1])
            chunk.append((next(free), r, tag))
            width = w
        if chunk:
            self._prefill(chunk)

    def _prefill(self, chunk: list[tuple[int, RowRequest, Any]]) -> None:
        """One batched prefill of the rows in ``chunk`` into their slots. Everything the device needs
        (right-padded tokens, slots, lengths, limits, noise keys, sampling parameters) travels in one
        host buffer (pinned on CUDA): one copy, no per-field host-to-device syncs."""
        dev, st = self.device, self.state
        n = len(chunk)
        lens = [int(r.prompt.shape[1]) for _, r, _ in chunk]
        width = max(lens)
        n_tok = 1 + self.model.config.num_codebooks
        seeds = [random.getrandbits(63) if r.seed is None else int(r.seed) & 0xFFFFFFFFFFFFFFFF for _, r, _ in chunk]
        params = torch.tensor([[r.temperature, r.top_p, r.repetition_penalty] for _, r, _ in chunk], dtype=torch.float32)
        fields = torch.tensor(
            [[s for s, _, _ in chunk], lens, [r.max_new_tokens for _, r, _ in chunk], [row_key(x) for x in seeds]],
            dtype=torch.int64,
        )
        host = torch.zeros(n * n_tok * width + 4 * n + 3 * n, dtype=torch.int64, pin_memory=dev.type == "cuda")
        tok = host[: n * n_tok * width].view(n, n_tok, width)
        for i, (_, r, _) in enumerate(chunk):
            tok[i, :, : lens[i]] = r.prompt
        host[n * n_tok * width : n * n_tok * width + 4 * n] = fields.flatten()
        host[n * n_tok * width + 4 * n :] = params.view(torch.int32).flatten().to(torch.int64)
        staged = host.to(dev, non_blocking=True)
        tokens = staged[: n * n_tok * width].view(n, n_tok, width)
        idx, lens_t, limit, keys = staged[n * n_tok * width : n * n_tok * width + 4 * n].view(4, n)
        floats = staged[n * n_tok * width + 4 * n :].to(torch.int32).view(torch.float32).view(n, 3)
        logits, hidden = prefill(self.model, self.head, tokens, lens_t, idx, self.cache_k, self.cache_v)
        st.lens.index_copy_(0, idx, lens_t)
        st.steps.index_fill_(0, idx, 0)
        st.limit.index_copy_(0, idx, limit)
        st.key.index_copy_(0, idx, keys)
        st.temperature.index_copy_(0, idx, floats[:, 0])
        st.top_p.index_copy_(0, idx, floats[:, 1])
        st.repetition_penalty.index_copy_(0, idx, floats[:, 2])
        st.active.index_fill_(0, idx, True)
        st.logits.index_copy_(0, idx, logits.float())
        st.hidden.index_copy_(0, idx, hidden.to(st.hidden.dtype))
        st.history.index_fill_(0, idx, -1)
        for (s, r, tag), n_prompt in zip(chunk, lens, strict=True):
            self.live[s] = _Live(tag, n_prompt, r.max_new_tokens)
