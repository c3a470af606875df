"""Where the codec decoder runs: beside the decode loop, or in a process of its own.

The engine's codec thread hands each batch of finished rows to a runner and waits for the audio:

* :class:`ThreadCodec` decodes in that thread. On CUDA it uses a stream of its own, so its kernels
  never queue between the decode graphs' replays on the default stream (the decode loop's per-step
  flag read used to wait for codec work enqueued before it).
* :class:`ProcessCodec` decodes in a child process (spawned, fed over a pipe). The codec thread then
  only waits on the pipe, with the GIL released, so the decode thread (and the worker's event loop)
  no longer share one interpreter lock with the codec's Python-side work. On the CPU a decode step
  took 2.3x longer while an in-process codec ran; ``ops/bench/s1mini.py`` measures both modes.

``codec_process="auto"`` picks the process on the CPU and the thread (own stream) on CUDA, where a
second process would need its own CUDA context and, without MPS, would time-slice with the decode
graphs instead of overlapping them (unmeasured on a GPU here: see docs/s1mini.md).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..base import EngineError, EngineOutOfMemory
from .checkpoint import load_into, read_codec_state
from .codec import CodecDecoder, Snake1d
from .config import CodecConfig

log = logging.getLogger(__name__)

CODEC_DTYPES = ("float32", "bfloat16", "bf16-autocast")


@dataclass(frozen=True)
class CodecSpec:
    """Everything a process needs to build the same codec as the engine would."""

    config: CodecConfig
    device: str
    dtype: str  # float32 | bfloat16 (weights and activations) | bf16-autocast (fp32 weights, bf16 matmuls, Snake in fp32)
    checkpoint: str | None  # codec.pth; None: random weights from ``seed``
    seed: int = 0
    compile: bool = False
    threads: int | None = None  # torch intra-op threads in a codec process

    @property
    def pad_to(self) -> int:
        return 32 if self.compile else 1


def build_codec(spec: CodecSpec) -> CodecDecoder:
    if spec.dtype not in CODEC_DTYPES:
        raise ValueError(f"unknown codec dtype {spec.dtype!r}; use one of {', '.join(CODEC_DTYPES)}")
    codec = CodecDecoder(spec.config)
    if spec.checkpoint is None:
        codec.init_random(spec.seed)
    else:
        load_into(codec, read_codec_state(spec.checkpoint), "S1-mini codec (codec.pth)")
    weights = torch.bfloat16 if spec.dtype == "bfloat16" else torch.float32
    codec.to(device=torch.device(spec.device), dtype=weights).eval()
    for m in codec.modules():
        if isinstance(m, Snake1d):
            m.fp32 = spec.dtype == "bf16-autocast"
    return codec


class ThreadCodec:
    """The codec in the calling thread (the engine's codec thread), on its own CUDA stream."""

    def __init__(self, spec: CodecSpec, codec: CodecDecoder | None = None) -> None:
        self.spec = spec
        self.codec = codec or build_codec(spec)
        self.device = torch.device(spec.device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._forward = torch.compile(self.codec.forward, dynamic=True) if spec.compile else self.codec.forward

    @property
    def dtype(self) -> torch.dtype:
        return next(self.codec.parameters()).dtype

    def _run(self, codes: Tensor) -> Tensor:
        if self.spec.dtype == "bf16-autocast":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self._forward(codes)
        return self._forward(codes)

    @torch.no_grad()
    def decode(self, rows: list[Tensor], max_batch: int) -> list[Tensor]:
        """Audio (float32, on the CPU) for codes (10, T_b) of each row."""
        if self.stream is None:
            return self.codec.decode_rows(rows, max_batch, forward=self._run, pad_to=self.spec.pad_to)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            # decode_rows copies each batch to the host, which waits for this stream only
            return self.codec.decode_rows(rows, max_batch, forward=self._run, pad_to=self.spec.pad_to)

    def close(self) -> None:
        return None


def _serve(spec: CodecSpec, conn: Connection) -> None:
    """The codec process: build the codec, say ready (or why not), then decode until told to stop."""
    try:
        if spec.threads:
            torch.set_num_threads(spec.threads)
        runner = ThreadCodec(spec)
        conn.send(("ready", str(runner.dtype).replace("torch.", "")))
    except Exception as e:  # noqa: BLE001 - reported to the engine, which refuses to start with it
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        rows, max_batch = msg
        try:
            audio = runner.decode([torch.from_numpy(r) for r in rows], max_batch)
            conn.send(("ok", [a.numpy() for a in audio]))
        except Exception as e:  # noqa: BLE001 - the engine fails this batch's rows with it and goes on
            oom = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()
            conn.send(("oom" if oom else "error", f"{type(e).__name__}: {e}"))


class ProcessCodec:
    """The codec in a spawned child process; ``decode`` blocks the calling thread on the pipe only.

    A child that dies fails the batch in hand (``codec_process_died``) and is started again for the next
    one; an error inside the child fails only that batch."""

    def __init__(self, spec: CodecSpec, start_timeout: float = 600.0) -> None:
        self.spec = spec
        self.start_timeout = start_timeout
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self.dtype: torch.dtype | None = None
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(self.spec, child), name="s1mini-codec", daemon=True)
        proc.start()
        child.close()
        if not parent.poll(self.start_timeout):
            proc.kill()
            raise EngineError(f"S1-mini codec process not ready within {self.start_timeout:.0f}s", code="engine_unavailable")
        try:
            kind, payload = parent.recv()
        except EOFError:
            proc.join(5)
            raise EngineError(f"S1-mini codec process exited at start (exit code {proc.exitcode})", code="engine_unavailable") from None
        if kind != "ready":
            proc.join(5)
            raise EngineError(f"S1-mini codec process failed to start: {payload}", code="engine_unavailable")
        self.dtype = getattr(torch, payload)
        self._proc, self._conn = proc, parent
        log.info("S1-mini codec process %d ready (%s, %s)", proc.pid, self.spec.device, payload)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def decode(self, rows: list[Tensor], max_batch: int) -> list[Tensor]:
        if self._conn is None:
            self._start()
            self.restarts += 1
        assert self._conn is not None
        try:
            self._conn.send(([np.ascontiguousarray(r.numpy()) for r in rows], max_batch))
            kind, payload = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as e:
            code = self._proc.exitcode if self._proc is not None else None
            self._drop()
            raise EngineError(f"S1-mini codec process died (exit code {code}): {type(e).__name__}", code="codec_process_died") from e
        if kind == "ok":
            return [torch.from_numpy(a) for a in payload]
        if kind == "oom":
            raise EngineOutOfMemory(f"S1-mini codec batch of {len(rows)} rows did not fit: {payload}")
        raise EngineError(f"S1-mini codec: {payload}")

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        if self._proc is not None:
            self._proc.join(5)
        self._proc, self._conn = None, None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        if self._proc is not None:
            self._proc.join(10)
        self._drop()


def codec_runner(spec: CodecSpec, mode: str, codec: CodecDecoder | None = None) -> ThreadCodec | ProcessCodec:
    """``mode``: auto (process on the CPU, thread on CUDA), thread or process."""
    if mode not in ("auto", "thread", "process"):
        raise ValueError(f"codec_process must be auto, thread or process, not {mode!r}")
    if mode == "process" or (mode == "auto" and torch.device(spec.device).type == "cpu"):
        return ProcessCodec(spec)
    return ThreadCodec(spec, codec)
