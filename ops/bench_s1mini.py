"""Throughput of the batched S1-mini engine at several batch sizes (random weights, real shapes).

    python -m ops.bench_s1mini --device cpu  --batch-sizes 1,2,4,8,16 --out results/s1mini_cpu.json
    python -m ops.bench_s1mini --device cuda --batch-sizes 1,2,4,8,16 --out results/s1mini_cuda.json
    python -m ops.bench_s1mini --tiny ...      # the test configuration, for a quick smoke run

Random weights cost the same compute as the real checkpoint. Every row decodes exactly --steps
frames (the end token is masked out), so the figures are steady-state decode throughput:
  frames_per_s   = batch * steps / decode seconds   (one frame = 1 slow step + 10 fast steps)
  audio_s_per_s  = frames_per_s * 2048 / 44100      (seconds of audio produced per second)
plus prefill time for --prompt-len tokens per row, the codec's own audio_s_per_s when decoding
--codec-frames frames per row, and each figure's ratio to batch 1 within the same run.
On a small CPU keep --steps small (default 4 on CPU): the real model is ~0.8 B parameters.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from stream_workers.engine.s1mini.codec import CodecDecoder
from stream_workers.engine.s1mini.config import s1mini_codec_config, s1mini_config, tiny_codec_config, tiny_config
from stream_workers.engine.s1mini.engine import is_oom, resolve_dtype
from stream_workers.engine.s1mini.generate import GenerateStats, RowRequest, generate_batch
from stream_workers.engine.s1mini.model import DualARTransformer
from stream_workers.engine.s1mini.tokenizer import ByteTokenizer


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch-sizes", default="1,2,4,8,16")
    ap.add_argument("--out", default=None, help="results JSON (default results/s1mini_<device>.json)")
    ap.add_argument("--tiny", action="store_true", help="the tiny test configuration")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")
    ap.add_argument("--steps", type=int, default=None, help="decode frames per row (default: cpu 4, cuda 128)")
    ap.add_argument("--prompt-len", type=int, default=None, help="prompt tokens per row (default: cpu 32, cuda 128)")
    ap.add_argument("--codec-frames", type=int, default=None, help="frames per row for the codec (cpu 4, cuda 256; 0: skip)")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--compile", action="store_true", help="torch.compile the step functions")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = dev.type == "cpu"
    steps = args.steps or (4 if cpu else 128)
    prompt_len = args.prompt_len or (32 if cpu else 128)
    codec_frames = args.codec_frames if args.codec_frames is not None else (4 if cpu else 256)
    dtype = resolve_dtype(args.dtype, dev)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    out = Path(args.out or f"results/s1mini_{dev.type}{'_tiny' if args.tiny else ''}.json")

    cfg = tiny_config(0, 64) if args.tiny else s1mini_config()
    tok = ByteTokenizer(num_semantic=cfg.codebook_size)
    if args.tiny:
        cfg.vocab_size = tok.vocab_size
    ccfg = tiny_codec_config(cfg.codebook_size) if args.tiny else s1mini_codec_config()
    t0 = time.perf_counter()
    with torch.device(dev):
        model = DualARTransformer(cfg, tok.semantic_begin_id, tok.semantic_end_id)
        codec = CodecDecoder(ccfg)
    model.init_random(0).to(dtype=dtype).eval()
    codec.init_random(0).eval()
    build_s = time.perf_counter() - t0
    step_fn, fast_fn = model.forward_slow, model.forward_fast
    if args.compile:
        step_fn = torch.compile(model.forward_slow, dynamic=True)
        fast_fn = torch.compile(model.forward_fast)

    def no_end(step, active, logits):  # keep every row decoding for exactly `steps` frames
        logits[:, -1] = float("-inf")
        return logits

    def rows(b: int, n_steps: int) -> list[RowRequest]:
        g = torch.Generator().manual_seed(b)
        out_rows = []
        for i in range(b):
            p = torch.zeros((1 + cfg.num_codebooks, prompt_len), dtype=torch.long)
            p[0] = torch.randint(32, 127, (prompt_len,), generator=g)  # byte-level "text"
            out_rows.append(RowRequest(p, n_steps, args.temperature, 0.8, 1.1, seed=i))
        return out_rows

    def run(b: int, n_steps: int) -> GenerateStats:
        st = GenerateStats()
        generate_batch(
            model, rows(b, n_steps), end_token_id=tok.im_end_id, residual_vocab=ccfg.codebook_size,
            slow_logits_hook=no_end, stats=st, step_fn=step_fn, fast_fn=fast_fn,
        )
        return st

    results = []
    for b in batch_sizes:
        entry: dict = {"batch_size": b}
        try:
            run(b, 2)  # warm-up (allocator, kernels, compile)
            st = run(b, steps)
            frames = b * steps
            entry.update(
                prefill_s=st.prefill_s, decode_s=st.decode_s, steps=st.steps,
                steps_per_s=st.steps / st.decode_s, frames_per_s=frames / st.decode_s,
                audio_s_per_s=frames / st.decode_s * ccfg.hop_length / ccfg.sample_rate,
                prefill_tokens_per_s=b * prompt_len / st.prefill_s,
            )
            if codec_frames:
                g = torch.Generator().manual_seed(1)
                codes = [torch.randint(0, ccfg.codebook_size, (ccfg.num_codebooks, codec_frames), generator=g) for _ in range(b)]
                codec.decode_rows(codes[:1], max_batch=b)  # warm-up
                sync(dev)
                t0 = time.perf_counter()
                codec.decode_rows(codes, max_batch=b)
                sync(dev)
                cs = time.perf_counter() - t0
                entry.update(codec_s=cs, codec_audio_s_per_s=b * codec_frames * ccfg.hop_length / ccfg.sample_rate / cs)
                # one request's whole life at this batch size: prefill + decode + codec for the run above
                audio_s = frames * ccfg.hop_length / ccfg.sample_rate
                entry["end_to_end_audio_s_per_s"] = audio_s / (
                    st.prefill_s + st.decode_s + cs * steps / codec_frames
                )
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            entry["error"] = f"out of memory: {e}"[:300]
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        results.append(entry)
        print(json.dumps(entry), flush=True)

    base = next((r for r in results if r["batch_size"] == 1 and "error" not in r), None)
    if base:
        for r in results:
            if "error" in r:
                continue
            for k in ("frames_per_s", "audio_s_per_s", "steps_per_s", "codec_audio_s_per_s", "end_to_end_audio_s_per_s"):
                if k in r and k in base:
                    r[f"{k}_vs_b1"] = r[k] / base[k]

    report = {
        "benchmark": "s1mini",
        "device": str(dev),
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "compile": args.compile,
        "tiny": args.tiny,
        "weights": "random (same compute as the checkpoint)",
        "model": {
            "params": model.parameter_count(),
            "codec_decoder_params": sum(p.numel() for p in codec.parameters()),
            **{k: getattr(cfg, k) for k in ("dim", "n_layer", "n_head", "n_local_heads", "head_dim", "intermediate_size",
                                            "vocab_size", "codebook_size", "num_codebooks", "n_fast_layer", "fast_dim",
                                            "fast_n_head", "fast_n_local_heads", "fast_head_dim", "fast_intermediate_size")},
        },
        "steps_per_row": steps,
        "prompt_len": prompt_len,
        "codec_frames_per_row": codec_frames,
        "temperature": args.temperature,
        "build_s": build_s,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
