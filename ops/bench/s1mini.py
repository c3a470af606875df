"""S1-mini decode benchmarks: the static slot step per bucket, old vs new host cost, continuous batching
with Poisson arrivals, the codec in fp32 vs bf16, and process start-to-ready (random weights).

    python -m ops.bench.s1mini --device cpu  --batch-sizes 1,2,4 --out results/s1mini_cpu.json
    python -m ops.bench.s1mini --device cuda --batch-sizes 1,2,4,8,16,32,64 --out results/s1mini_cuda.json
    python -m ops.bench.s1mini --tiny ...     # the test configuration (fast; for the continuous mode on a CPU)

Sections (``--modes``, comma-separated; default all):
  static      per batch bucket: ms per decode step, frames/s, audio-s/s (one frame = 1 slow step + the
              10-codebook fast loop; audio-s/s = frames/s * 2048 / 44100). On CUDA the step is a
              captured graph (the engine's path); on the CPU it is eager.
  proxies     the same work through the old ``generate_batch`` and the new step in one run: aten ops per
              decode step (torch.profiler, nested ops included, both counted the same way), CPU ms per
              step at batch 1, and whether the step compiles with fullgraph=True (and, with
              --inductor, the compiled step's aten ops and ms per step).
  continuous  the engine (decode thread + codec thread) fed Poisson arrivals of notes of 1-20 s drawn
              uniformly, twice: "saturated" (arrivals above capacity: throughput) and "at_load" (below:
              latency). Each reports audio-s/s, mean live slots, p50/p99 time from submit to audio, and
              the ratio to the static largest bucket measured in the same run.
  codec       the codec decoder on random codes, fp32 vs bf16 vs bf16-autocast (Snake in fp32):
              audio-s/s and the error vs fp32.
  startup     a child process from exec to ``engine.ready`` (imports, weights, warm-up / capture);
              with --compile, the compiled step: compile (and capture) seconds per bucket pair.
  sdpa        the SDPA backend torch picks for each attention call of a prefill and a decode step
              (torch._fused_sdp_choice on the very tensors: FLASH_ATTENTION, EFFICIENT_ATTENTION, MATH...)
  ops         operators per decode step at real S1-mini shapes, batch 1, 8 and 64, counted on the
              ``meta`` device (quick): CUDA-eager count and fully decomposed count (s1mini_ops.py).
  kernels     the step compiled by inductor at real shapes, batch 1: generated kernels (inductor's
              metrics) plus the extern calls (matmuls, attention) the compiled step makes per run,
              and the compile seconds. On the CPU the C++ backend fuses a little differently from
              CUDA's Triton backend: a proxy for the GPU's count.
The continuous mode runs once per codec placement (``--codec-modes``, default thread,process): the
codec in the engine's thread vs in its own process, each against the same static figure.
Random weights cost the same compute as the checkpoint. Figures are for comparing within one run.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ops.bench.s1mini_reference import GenerateStats, generate_batch
from stream_workers.engine.base import SynthesisInput
from stream_workers.engine.s1mini.codec_runner import CodecSpec, ThreadCodec
from stream_workers.engine.s1mini.config import (
    S1MiniSettings,
    s1mini_codec_config,
    s1mini_config,
    tiny_codec_config,
    tiny_config,
)
from stream_workers.engine.s1mini.decode_step import decode_step
from stream_workers.engine.s1mini.engine import S1MiniEngine, is_oom
from stream_workers.engine.s1mini.loader import resolve_dtype
from stream_workers.engine.s1mini.model import DualARTransformer
from stream_workers.engine.s1mini.slots import RowRequest, SlotDecoder
from stream_workers.engine.s1mini.tokenizer import ByteTokenizer

from .s1mini_ops import count_step_ops

FRAME_RATE = 44100 / 2048  # code frames per second of audio


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def configs(tiny: bool):
    cfg = tiny_config(0, 64) if tiny else s1mini_config()
    tok = ByteTokenizer(num_semantic=cfg.codebook_size)
    if tiny:
        cfg.vocab_size = tok.vocab_size
    ccfg = tiny_codec_config(cfg.codebook_size) if tiny else s1mini_codec_config()
    return cfg, tok, ccfg


def make_rows(cfg, n: int, prompt_len: int, max_new: int, temperature: float) -> list[RowRequest]:
    g = torch.Generator().manual_seed(n)
    rows = []
    for i in range(n):
        p = torch.zeros((1 + cfg.num_codebooks, prompt_len), dtype=torch.long)
        p[0] = torch.randint(32, 127, (prompt_len,), generator=g)  # byte-level "text"
        rows.append(RowRequest(p, max_new, temperature, 0.8, 1.1, seed=i))
    return rows


def aten_ops(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


# ---------------------------------------------------------------------------------------------- static
def bench_static(model, tok, ccfg, dev, batch_sizes, steps, prompt_len, temperature, capacity, use_graphs):
    slots = max(batch_sizes)
    dec = SlotDecoder(model, end_token_id=tok.im_end_id, residual_vocab=ccfg.codebook_size, slots=slots,
                      capacity=capacity, use_graphs=use_graphs)
    t0 = time.perf_counter()
    dec.warm_up()
    sync(dev)
    warm_s = time.perf_counter() - t0
    out = []
    for b in batch_sizes:
        entry: dict = {"batch_size": b, "rows_decoding": "all b, every step"}
        try:
            dec.add([(r, i) for i, r in enumerate(make_rows(model.config, b, prompt_len, steps + 2, temperature))])
            # the bucket's own step (the graph on CUDA), run as a full static batch: nothing frees a row
            # between steps, so every step decodes b rows even where a random-weight row drew its end
            # token (SlotDecoder.step would free it and shrink the bucket mid-measurement)
            bucket, kvb = dec._bucket()
            g = dec._graphs.get((bucket, kvb))
            run = g.replay if g is not None else dec._views(bucket, kvb)
            run()  # the first step after a prefill (allocator, caches)
            sync(dev)
            t0 = time.perf_counter()
            for _ in range(steps):
                run()
            sync(dev)
            dt = time.perf_counter() - t0
            frames = b * steps
            dec.abort()
            entry.update(ms_per_step=1000 * dt / steps, frames=frames, frames_per_s=frames / dt,
                         audio_s_per_s=frames / dt / FRAME_RATE, kv_bucket=kvb)
        except Exception as e:  # noqa: BLE001 - an OOM ends this bucket only, and is reported
            if not is_oom(e):
                raise
            entry["error"] = f"out of memory: {e}"[:300]
            dec.abort()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        print(json.dumps(entry), flush=True)
        out.append(entry)
    base = next((r for r in out if r["batch_size"] == 1 and "error" not in r), None)
    for r in out:
        if base and "error" not in r:
            r["frames_per_s_vs_b1"] = r["frames_per_s"] / base["frames_per_s"]
    return {"warm_up_s": warm_s, "graphs": len(dec._graphs), "kv_capacity": capacity,
            "kv_cache_bytes": dec.kv_bytes(), "results": out}


# ---------------------------------------------------------------------------------------------- proxies
def bench_proxies(model, tok, ccfg, dev, steps, prompt_len, temperature, capacity, inductor, rounds):
    res: dict = {"batch_size": 1, "steps": steps}
    rows = make_rows(model.config, 1, prompt_len, steps + 1, temperature)

    def no_end(step, active, logits):
        logits[:, -1] = float("-inf")
        return logits

    def old(n):
        st = GenerateStats()
        generate_batch(model, [RowRequest(r.prompt, n, r.temperature, r.top_p, r.repetition_penalty, r.seed) for r in rows],
                       end_token_id=tok.im_end_id, residual_vocab=ccfg.codebook_size, slow_logits_hook=no_end, stats=st)
        return st

    old(2)
    # generate_batch with n frames = prefill + n sampling rounds + n - 1 slow steps: the difference
    # between n = 1 + k and n = 1 isolates k full decode steps
    k = steps
    ops_old = (aten_ops(lambda: old(1 + k)) - aten_ops(lambda: old(1))) / k

    dec = SlotDecoder(model, end_token_id=tok.im_end_id, residual_vocab=ccfg.codebook_size, slots=1,
                      capacity=capacity, use_graphs=False)
    dec.add([(rows[0], 0)])
    # the row keeps stepping through every round (the host never frees it): a KV bucket covering them all
    need = prompt_len + (2 * rounds + 4) * k + 1
    kvb = next(b for b in dec.kv_buckets if b >= min(need, capacity))
    args = (dec.model, dec.head, dec.state, dec.cache_k, dec.cache_v, dec.fast_k, dec.fast_v, dec.consts, kvb)

    def new_step(fn):
        with torch.no_grad():
            fn(*args)

    def new_ms(fn) -> float:
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(k):
            new_step(fn)
        sync(dev)
        return 1000 * (time.perf_counter() - t0) / k

    def old_ms() -> float:
        st = old(1 + k)
        return 1000 * st.decode_s / st.steps

    new_step(decode_step)
    ops_new = aten_ops(lambda: new_step(decode_step))
    # old and new alternate round by round, so load on a shared machine hits both alike
    times: dict[str, list[float]] = {"old": [], "new_eager": []}
    for _ in range(rounds):
        times["old"].append(old_ms())
        times["new_eager"].append(new_ms(decode_step))
    res["old"] = {"aten_ops_per_step": ops_old}
    res["new_eager"] = {"aten_ops_per_step": ops_new}

    torch._dynamo.reset()
    try:
        new_step(torch.compile(decode_step, fullgraph=True, dynamic=False, backend="eager"))
        res["fullgraph_compiles"] = True
    except Exception as e:  # noqa: BLE001 - the failure is the finding, reported in the results
        res["fullgraph_compiles"] = False
        res["fullgraph_error"] = str(e)[:500]
    if inductor:
        torch._dynamo.reset()
        comp = torch.compile(decode_step, fullgraph=True, dynamic=False)
        t0 = time.perf_counter()
        new_step(comp)
        compile_s = time.perf_counter() - t0
        new_step(comp)
        res["new_inductor"] = {"aten_ops_per_step": aten_ops(lambda: new_step(comp)), "compile_s": compile_s}
        times["new_inductor"] = []
        for _ in range(rounds):
            times["old"].append(old_ms())
            times["new_inductor"].append(new_ms(comp))
    for name, ts in times.items():
        res[name].update(ms_per_step_min=min(ts), ms_per_step_median=statistics.median(ts), rounds=len(ts))
    for name in ("new_eager", "new_inductor"):
        if name in res:
            res[name]["aten_ops_reduction_vs_old"] = ops_old / max(1, res[name]["aten_ops_per_step"])
            res[name]["step_time_ratio_vs_old_min"] = res[name]["ms_per_step_min"] / res["old"]["ms_per_step_min"]
    print(json.dumps(res), flush=True)
    return res


# ---------------------------------------------------------------------------------------------- sdpa backends
class _SdpaChoices(torch.overrides.TorchFunctionMode):
    """Records, for every SDPA call, the backend torch's dispatcher picks for those tensors on this device."""

    def __init__(self) -> None:
        super().__init__()
        self.picked: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            q, k, v = args[:3]
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            choice = torch._fused_sdp_choice(q, k, v, mask, 0.0, kwargs.get("is_causal", False),
                                             enable_gqa=kwargs.get("enable_gqa", False))
            self.picked[torch.nn.attention.SDPBackend(choice).name] += 1
        return func(*args, **kwargs)


def bench_sdpa_backends(model, tok, ccfg, dev, prompt_len, capacity) -> dict:
    """Which SDPA backend each attention call of one prefill and one decode step gets on this device."""
    dec = SlotDecoder(model, end_token_id=tok.im_end_id, residual_vocab=ccfg.codebook_size, slots=2,
                      capacity=capacity, use_graphs=False)
    out = {}
    with torch.no_grad():
        with _SdpaChoices() as seen:
            dec.add([(r, i) for i, r in enumerate(make_rows(model.config, 2, prompt_len, 8, 0.8))])
        out["prefill"] = dict(seen.picked)
        with _SdpaChoices() as seen:
            dec.step()
        out["decode_step"] = dict(seen.picked)
    dec.abort()
    print(json.dumps({"sdpa_backends": out}), flush=True)
    return out


# ---------------------------------------------------------------------------------------------- ops / kernels
def bench_ops(batch_sizes=(1, 8, 64)) -> dict:
    out: dict = {str(b): count_step_ops(b) for b in batch_sizes}
    out["method"] = ("meta device, bf16, real S1-mini shapes, KV bucket 512; cuda_eager counts SDPA and "
                     "aten._fused_rms_norm as one operator each (one kernel each on CUDA), decomposed counts every aten op")
    print(json.dumps({b: (r["cuda_eager"], r["decomposed"]) for b, r in out.items() if b != "method"}), flush=True)
    return out


_KERNEL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product", "aten::sort", "aten::cumsum",
               "aten::scatter", "aten::copy_", "aten::gather", "aten::index", "aten::embedding", "aten::arange")


def bench_kernels(model, tok, ccfg, dev, prompt_len, capacity) -> dict:
    """Inductor on the real-shape step at batch 1: generated kernels + extern calls per step, compile s."""
    import torch._inductor.metrics as metrics

    dec = SlotDecoder(model, end_token_id=tok.im_end_id, residual_vocab=ccfg.codebook_size, slots=1,
                      capacity=capacity, use_graphs=False)
    dec.add([(make_rows(model.config, 1, prompt_len, 64, 0.8)[0], 0)])
    kvb = dec._bucket()[1]
    args = (dec.model, dec.head, dec.state, dec.cache_k, dec.cache_v, dec.fast_k, dec.fast_v, dec.consts, kvb)
    torch._dynamo.reset()
    metrics.reset()
    comp = torch.compile(decode_step, fullgraph=True, dynamic=False)
    t0 = time.perf_counter()
    with torch.no_grad():
        comp(*args)
    compile_s = time.perf_counter() - t0
    generated = metrics.generated_kernel_count
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        comp(*args)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            comp(*args)
        # what the compiled graph still launches outside its generated kernels: matmuls, attention,
        # sorts, scans, scatters and copies (allocations, views and nested calls are not kernels)
        extern = collections.Counter(
            e.name for e in prof.events()
            if e.name.startswith(_KERNEL_OPS) and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
        )
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(5):
            comp(*args)
        sync(dev)
    n_extern = sum(extern.values())
    res = {"batch_size": 1, "kv_bucket": kvb, "compile_s": compile_s, "generated_kernels": generated,
           "extern_kernels_per_step": n_extern, "extern_by_op": dict(extern.most_common()),
           "kernels_per_step": generated + n_extern,
           "ms_per_step": 1000 * (time.perf_counter() - t0) / 5}
    print(json.dumps(res), flush=True)
    return res


# ---------------------------------------------------------------------------------------------- continuous
class _NoteEngine(S1MiniEngine):
    """The engine with each note's frame count fixed by the benchmark (random weights rarely stop)."""

    note_frames: dict[str, int] = {}

    def _row(self, inp):
        row = super()._row(inp)
        row.max_new_tokens = min(self.note_frames[inp.job_id], row.max_new_tokens)
        return row


def bench_continuous(settings, tok, n_requests, rate, slots, static_audio_s_per_s, seed):
    rng = random.Random(seed)
    eng = _NoteEngine(settings, tokenizer=tok)
    codec_mode = type(eng.codec_runner).__name__
    try:
        eng.wait_ready()
        notes = [rng.uniform(1.0, 20.0) for _ in range(n_requests)]
        gaps = [rng.expovariate(rate) for _ in range(n_requests)]
        for i, s in enumerate(notes):
            eng.note_frames[f"n{i}"] = max(1, round(s * FRAME_RATE))
        words = "the quick brown fox jumps over the lazy dog".split()
        futures, submitted = [], []
        t_start = time.perf_counter()
        next_at = t_start
        for i in range(n_requests):
            next_at += gaps[i]
            time.sleep(max(0.0, next_at - time.perf_counter()))
            text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
            submitted.append(time.perf_counter())
            futures.append(eng.submit([SynthesisInput(f"n{i}", text, temperature=0.8, seed=i)])[0])
        # the steady window: from the first arrival until the queue has drained into the slots (the
        # tail after it, the longest notes finishing with few batch-mates, is reported apart)
        while eng._pending:
            time.sleep(0.005)
        t_admitted, st_admitted = time.perf_counter(), (eng.stats.steps, eng.stats.row_steps)
        results = [f.result() for f in futures]
        t_end = time.perf_counter()
        ok = [r for r in results if r.ok]
        audio = sum(r.extra["audio_seconds"] for r in ok)
        tta = sorted(r.extra["seconds_in_engine"] for r in ok)
        st = eng.stats
        res = {
            "codec": codec_mode, "requests": n_requests, "ok": len(ok), "arrival_rate_per_s": rate, "slots": slots,
            "wall_s": t_end - t_start, "audio_s": audio, "audio_s_per_s": audio / (t_end - t_start),
            "mean_live_slots": st.row_steps / max(1, st.steps), "decode_steps": st.steps,
            "codec_batches": st.codec_batches, "codec_rows_per_batch": st.codec_rows / max(1, st.codec_batches),
            "time_to_audio_p50_s": statistics.median(tta) if tta else None,
            "time_to_audio_p99_s": tta[min(len(tta) - 1, math.ceil(0.99 * len(tta)) - 1)] if tta else None,
            "static_largest_bucket_audio_s_per_s": static_audio_s_per_s,
            "steady_window_s": t_admitted - t_start,
            "steady_decode_audio_s_per_s": st_admitted[1] / FRAME_RATE / (t_admitted - t_start),
            "steady_mean_live_slots": st_admitted[1] / max(1, st_admitted[0]),
        }
        if st.first_full is not None and st.first_full[0] < t_admitted:
            # saturated: from when every slot first held a row until the queue drained into the slots
            t_full, steps_full, rows_full = st.first_full
            res["saturated_window_s"] = t_admitted - t_full
            res["saturated_mean_live_slots"] = (st_admitted[1] - rows_full) / max(1, st_admitted[0] - steps_full)
            res["saturated_decode_audio_s_per_s"] = (st_admitted[1] - rows_full) / FRAME_RATE / (t_admitted - t_full)
        if static_audio_s_per_s:
            res["vs_static_largest_bucket"] = res["audio_s_per_s"] / static_audio_s_per_s
            res["steady_vs_static_largest_bucket"] = res["steady_decode_audio_s_per_s"] / static_audio_s_per_s
            if "saturated_decode_audio_s_per_s" in res:
                res["saturated_vs_static_largest_bucket"] = res["saturated_decode_audio_s_per_s"] / static_audio_s_per_s
        print(json.dumps(res), flush=True)
        return res
    finally:
        eng.close()


def bench_tiny_continuous(args) -> dict:
    """The continuous-vs-static proxy on the tiny configuration (a CPU can run it quickly): the static
    step at batch 1..8 (60 steps each), then the engine with Poisson arrivals per codec placement."""
    cfg, tok, ccfg = configs(True)
    model = DualARTransformer(cfg, tok.semantic_begin_id, tok.semantic_end_id).init_random(0).eval()
    with torch.no_grad():
        static = bench_static(model, tok, ccfg, torch.device("cpu"), [1, 2, 4, 8], 60, 32, 0.8, 512, use_graphs=False)
    top = static["results"][-1]["audio_s_per_s"]
    out: dict = {"config": "tiny", "slots": 8, "threads": torch.get_num_threads(), "codec_threads": args.codec_threads,
                 "static": static}
    for codec_mode in args.codec_modes.split(","):
        s = S1MiniSettings(random_init=True, device="cpu", model_config=cfg, codec_config=ccfg, slots=8, kv_capacity=512,
                           max_new_tokens=440, on_max_tokens="truncate", codec_batch_size=8, codec_process=codec_mode,
                           codec_threads=args.codec_threads)
        out[codec_mode] = {label: bench_continuous(s, tok, 48, load * top / 10.5, 8, top, seed=0) | {"load": load}
                           for label, load in (("saturated", args.saturate), ("at_load", args.load))}
    modes = args.codec_modes.split(",")
    out["steady_vs_static"] = {m: out[m]["saturated"]["steady_vs_static_largest_bucket"] for m in modes}
    out["saturated_vs_static"] = {m: out[m]["saturated"].get("saturated_vs_static_largest_bucket") for m in modes}
    print(json.dumps({"tiny_steady_vs_static": out["steady_vs_static"], "tiny_saturated_vs_static": out["saturated_vs_static"]}), flush=True)
    return out


# ---------------------------------------------------------------------------------------------- codec
def bench_codec(ccfg, dev, batch, frames, dtype_names):
    """Each codec dtype (codec_runner.CODEC_DTYPES) on the same random codes: audio-s/s and the error
    against the first (float32). On CUDA each runs on the runner's own stream, as the engine runs it."""
    g = torch.Generator().manual_seed(1)
    codes = [torch.cat([torch.randint(0, ccfg.semantic_codebook_size, (1, frames), generator=g),
                        torch.randint(0, ccfg.codebook_size, (ccfg.n_codebooks, frames), generator=g)]) for _ in range(batch)]
    out, ref = {"batch": batch, "frames_per_row": frames}, None
    for name in dtype_names:
        runner = ThreadCodec(CodecSpec(ccfg, str(dev), name, None, seed=0))
        runner.decode(codes[:1], 1)
        sync(dev)
        t0 = time.perf_counter()
        audio = torch.stack(runner.decode(codes, batch))
        sync(dev)
        dt_s = time.perf_counter() - t0
        e = {"audio_s_per_s": batch * frames / FRAME_RATE / dt_s, "seconds": dt_s}
        if ref is None:
            ref = audio
        else:
            err = (audio - ref).double()
            e["max_abs_err_vs_first"] = err.abs().max().item()
            e["snr_db_vs_first"] = 10 * math.log10(ref.double().pow(2).mean().item() / max(err.pow(2).mean().item(), 1e-30))
        out[name] = e
        del runner
    print(json.dumps(out), flush=True)
    return out


# ---------------------------------------------------------------------------------------------- startup
def child_startup(args) -> int:
    """Run in a fresh process: build the engine and wait until ready; print the seconds."""
    t0 = float(os.environ["S1MINI_BENCH_T0"])
    cfg, tok, ccfg = configs(args.tiny)
    s = S1MiniSettings(random_init=True, device=args.device, dtype=args.dtype, model_config=cfg, codec_config=ccfg,
                       slots=args.slots, kv_capacity=args.capacity, compile=args.compile or None,
                       compile_cache_dir=os.environ.get("S1MINI_BENCH_CACHE"))
    eng = S1MiniEngine(s, tokenizer=tok)
    eng.wait_ready()
    times = eng.decoder.warm_up_times
    print(json.dumps({"process_to_ready_s": time.time() - t0, "load_s": eng.load_s, "warm_up_s": eng.warm_up_s,
                      "ready": eng.ready and eng.warm_up_s is not None, "compiled": eng.decoder.compiled,
                      "bucket_pairs": len(eng.decoder.buckets) * len(eng.decoder.kv_buckets), "pairs_warmed": len(times),
                      "per_pair_s": {f"{b}x{k}": t for (b, k), t in times.items()},
                      "graphs": len(eng.decoder._graphs), "slots": eng.slots}))
    eng.close()
    return 0


def bench_startup(args) -> dict:
    cmd = [sys.executable, "-m", "ops.bench.s1mini", "--child-startup", "--device", args.device, "--dtype", args.dtype,
           "--slots", str(args.slots), "--capacity", str(args.capacity)] + (["--tiny"] if args.tiny else []) \
        + (["--compile"] if args.compile else [])
    res: dict = {}
    # with --compile: a cold start (empty inductor cache), then a restart reusing the on-disk cache
    runs = ("cold", "warm_cache") if args.compile else ("start",)
    with tempfile.TemporaryDirectory() as cache:
        for run in runs:
            env = dict(os.environ, S1MINI_BENCH_T0=repr(time.time()), S1MINI_BENCH_CACHE=cache, TORCHINDUCTOR_CACHE_DIR=cache)
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=3600)
            res[run] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps({run: res[run]}), flush=True)
    return res if args.compile else res["start"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch-sizes", default=None, help="static buckets (default cpu 1,2,4; cuda 1,2,4,8,16,32,64)")
    ap.add_argument("--modes", default="static,sdpa,proxies,continuous,codec,startup")
    ap.add_argument("--out", default=None, help="results JSON (default results/s1mini_<device>[_tiny].json)")
    ap.add_argument("--tiny", action="store_true", help="the tiny test configuration")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")
    ap.add_argument("--steps", type=int, default=None, help="timed decode steps (default: cpu 4, cuda 128)")
    ap.add_argument("--prompt-len", type=int, default=None, help="prompt tokens per row (default: cpu 32, cuda 128)")
    ap.add_argument("--capacity", type=int, default=None, help="KV columns per slot (default cpu 512, cuda 2048)")
    ap.add_argument("--slots", type=int, default=None, help="engine slots for continuous/startup (default: largest bucket)")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--rounds", type=int, default=3, help="proxies: alternating old/new timing rounds")
    ap.add_argument("--inductor", action="store_true", help="proxies: also torch.compile the step with inductor")
    ap.add_argument("--codec-modes", default="thread,process", help="continuous: codec placements to run (thread, process)")
    ap.add_argument("--compile", action="store_true", help="startup: the compiled step (inductor) per bucket pair")
    ap.add_argument("--update", action="store_true", help="keep the other sections of an existing --out file (each section names its own run time)")
    ap.add_argument("--requests", type=int, default=None, help="continuous: notes (default cpu 48, cuda 400)")
    ap.add_argument("--load", type=float, default=0.7, help="continuous: arrival rate (latency run) as a fraction of the static largest bucket")
    ap.add_argument("--saturate", type=float, default=3.0, help="continuous: arrival rate of the throughput run, same unit")
    ap.add_argument("--codec-frames", type=int, default=None, help="codec frames per row (cpu 8, cuda 256)")
    ap.add_argument("--codec-batch", type=int, default=None, help="codec rows per batch (cpu 2, cuda 16)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of this process (the engine decode thread included)")
    ap.add_argument("--codec-threads", type=int, default=None, help="torch threads of a codec process (default: torch's)")
    ap.add_argument("--child-startup", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = dev.type == "cpu"
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,2,4" if cpu else "1,2,4,8,16,32,64")).split(",") if b]
    args.slots = args.slots or max(batch_sizes)
    args.capacity = args.capacity or (512 if cpu else 2048)
    if args.child_startup:
        return child_startup(args)
    steps = args.steps or (4 if cpu else 128)
    prompt_len = args.prompt_len or (32 if cpu else 128)
    modes = set(args.modes.split(","))
    dtype = resolve_dtype(args.dtype, dev)
    out = Path(args.out or f"results/s1mini_{dev.type}{'_tiny' if args.tiny else ''}.json")

    cfg, tok, ccfg = configs(args.tiny)
    t0 = time.perf_counter()
    with torch.device(dev):
        model = DualARTransformer(cfg, tok.semantic_begin_id, tok.semantic_end_id)
    model.init_random(0).to(dtype=dtype).eval()
    build_s = time.perf_counter() - t0
    report: dict = {
        "benchmark": "s1mini",
        "device": str(dev),
        "device_name": device_name(dev),
        "gpu_figures": "measured" if dev.type == "cuda" else "unmeasured (no GPU in this run)",
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "tiny": args.tiny,
        "weights": "random (same compute as the checkpoint)",
        "model": {"params": model.parameter_count(),
                  **{k: getattr(cfg, k) for k in ("dim", "n_layer", "n_head", "n_local_heads", "head_dim", "intermediate_size",
                                                  "vocab_size", "codebook_size", "num_codebooks", "n_fast_layer", "fast_dim")}},
        "steps": steps, "prompt_len": prompt_len, "temperature": args.temperature, "build_s": build_s,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if "ops" in modes:
        report["eager_ops_per_step"] = bench_ops()
    with torch.no_grad():
        if "static" in modes:
            report["static"] = bench_static(model, tok, ccfg, dev, batch_sizes, steps, prompt_len, args.temperature,
                                            args.capacity, use_graphs=dev.type == "cuda")
        if "proxies" in modes:
            report["proxies"] = bench_proxies(model, tok, ccfg, dev, steps, prompt_len, args.temperature, args.capacity,
                                              args.inductor, args.rounds)
    if "sdpa" in modes:
        report["sdpa_backends"] = bench_sdpa_backends(model, tok, ccfg, dev, prompt_len, args.capacity)
    if "kernels" in modes:
        report["inductor_kernels"] = bench_kernels(model, tok, ccfg, dev, prompt_len, args.capacity)
    del model
    if "continuous" in modes:
        static = [r for r in report.get("static", {}).get("results", []) if "error" not in r]
        top = max(static, key=lambda r: r["batch_size"]) if static else None
        static_audio = top["audio_s_per_s"] if top else None
        report["continuous"] = {}
        for codec_mode in args.codec_modes.split(","):
            s = S1MiniSettings(random_init=True, device=args.device, dtype=args.dtype, model_config=cfg, codec_config=ccfg,
                               slots=args.slots, kv_capacity=max(args.capacity, 480 + prompt_len), max_new_tokens=440,
                               on_max_tokens="truncate", codec_batch_size=8, codec_process=codec_mode, compile=False)
            part = report["continuous"][codec_mode] = {}
            # arrivals at a fraction of what the largest static bucket sustains (mean note 10.5 s): above 1
            # the slots stay full (throughput); below 1 the queue stays short (time to audio)
            for label, load in (("saturated", args.saturate), ("at_load", args.load)):
                rate = (load * static_audio / 10.5) if static_audio else 1.0
                part[label] = bench_continuous(
                    s, tok, args.requests or (48 if cpu else 400), rate, args.slots, static_audio, seed=0
                ) | {"load": load}
    if "tiny_continuous" in modes:
        report["tiny_continuous"] = bench_tiny_continuous(args)
    if "codec" in modes:
        report["codec"] = bench_codec(ccfg, dev, args.codec_batch or (2 if cpu else 16), args.codec_frames or (8 if cpu else 256),
                                      ["float32", "bfloat16", "bf16-autocast"])
    if "startup" in modes:
        report["startup"] = bench_startup(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    # every section says which run made it (shapes, time); the top level holds what all runs share
    run = {"measured_at": report.pop("time"), "config": "tiny" if args.tiny else "real S1-mini shapes",
           "model": report.pop("model"), **{k: report.pop(k) for k in ("steps", "prompt_len", "temperature", "build_s", "tiny")}}
    for v in report.values():
        if isinstance(v, dict):
            v["run"] = run
    if args.update and out.exists():
        report = {**json.loads(out.read_text()), **report}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
