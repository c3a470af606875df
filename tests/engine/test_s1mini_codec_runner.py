"""Where the codec runs (codec_runner.py): a child process gives the audio the engine's thread gives, a
dead child fails only its batch and is started again, the bf16-autocast codec keeps Snake in fp32 and
stays close to fp32; and queued rows join a busy decoder in groups (S1MiniEngine._take_admissible)."""

from __future__ import annotations

import math
import os
import signal
import time
from types import SimpleNamespace

import pytest
import torch

from stream_workers.engine.base import EngineError, SynthesisInput
from stream_workers.engine.s1mini.codec import Snake1d
from stream_workers.engine.s1mini.codec_runner import CodecSpec, ProcessCodec, ThreadCodec, build_codec
from stream_workers.engine.s1mini.config import S1MiniSettings, tiny_codec_config
from stream_workers.engine.s1mini.engine import S1MiniEngine

N_SEM = 64  # as tests/engine/conftest.py


def _codes(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.randint(0, N_SEM, (1, t), generator=g), torch.randint(0, 32, (9, t), generator=g)]) for t in lengths]


@pytest.fixture(scope="module")
def spec():
    return CodecSpec(tiny_codec_config(N_SEM), "cpu", "float32", None, seed=7, threads=torch.get_num_threads())


def test_process_codec_gives_the_threads_audio_and_survives_a_dead_child(spec):
    rows = _codes([5, 9, 2])
    want = ThreadCodec(spec).decode(rows, 8)
    proc = ProcessCodec(spec)
    try:
        pid = proc.pid
        got = proc.decode(rows, 8)
        assert [a.shape for a in got] == [a.shape for a in want]
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(EngineError) as e:
            proc.decode(rows, 8)
        assert e.value.code == "codec_process_died"
        again = proc.decode(rows[:1], 8)  # a new child for the next batch
        assert proc.pid != pid and proc.restarts == 1
        torch.testing.assert_close(again[0], want[0], rtol=0, atol=1e-6)
    finally:
        proc.close()
    assert proc.pid is None


def test_a_codec_that_cannot_start_says_why(spec, tmp_path):
    with pytest.raises(EngineError, match="failed to start.*codec.pth"):
        ProcessCodec(CodecSpec(spec.config, "cpu", "float32", str(tmp_path / "codec.pth")))


def test_engine_with_the_codec_in_a_process(s1_tok, s1_cfg, make_engine):
    inputs = [SynthesisInput("a", "hello", temperature=0.0), SynthesisInput("b", "there, friend", seed=3)]
    want = make_engine(max_new_tokens=6).synthesize_batch(inputs)  # the codec in the engine's thread
    eng = S1MiniEngine(S1MiniSettings(random_init=True, seed=7, model_config=s1_cfg, codec_config=tiny_codec_config(N_SEM),
                                      max_new_tokens=6, on_max_tokens="truncate", codec_process="process"), tokenizer=s1_tok)
    try:
        assert isinstance(eng.codec_runner, ProcessCodec) and eng.codec_runner.pid != os.getpid()
        got = eng.synthesize_batch(inputs)
        for g, w in zip(got, want, strict=True):
            assert g.ok and w.ok and g.audio.shape == w.audio.shape
            assert abs(g.audio - w.audio).max() < 1e-5
        child = eng.codec_runner.pid
    finally:
        eng.close()
    with pytest.raises(ProcessLookupError):  # close() stops the child
        os.kill(child, 0)


def test_bf16_autocast_codec_keeps_snake_in_fp32_and_stays_close_to_fp32(spec):
    rows = _codes([16, 7], seed=1)
    ref = torch.cat(ThreadCodec(spec).decode(rows, 8))
    auto = ThreadCodec(CodecSpec(spec.config, "cpu", "bf16-autocast", None, seed=7))
    assert all(m.fp32 for m in auto.codec.modules() if isinstance(m, Snake1d))
    assert auto.dtype == torch.float32  # weights stay fp32; matmuls and convolutions run in bf16
    got = torch.cat(auto.decode(rows, 8))
    snr = 10 * math.log10(ref.double().pow(2).mean().item() / (got - ref).double().pow(2).mean().item())
    assert not torch.equal(got, ref) and snr > 15, snr  # bf16 did run, and the error is modest
    with pytest.raises(ValueError, match="codec dtype"):
        build_codec(CodecSpec(spec.config, "cpu", "int8", None))


def _engine_stub(pending, live, free, **settings):
    s = SimpleNamespace(**({"admit_group": 8, "admit_wait_ms": 30.0} | settings))
    dec = SimpleNamespace(live=dict.fromkeys(range(live)), free_slots=lambda: free)
    return SimpleNamespace(_pending=list(pending), decoder=dec, settings=s, _closing=False)


def test_busy_decoder_admits_queued_rows_in_groups():
    now = time.perf_counter()
    fresh = [SimpleNamespace(submitted=now) for _ in range(3)]
    take = S1MiniEngine._take_admissible
    assert take(_engine_stub(fresh, live=0, free=8)) == fresh  # idle: at once
    busy = _engine_stub(fresh, live=4, free=8)
    assert take(busy) == [] and len(busy._pending) == 3  # busy, 3 < 8 and fresh: wait for more
    assert take(_engine_stub(fresh, live=6, free=2)) == fresh[:2]  # a group as large as the free slots
    old = [SimpleNamespace(submitted=now - 0.05)] + fresh[1:]
    assert take(_engine_stub(old, live=4, free=8)) == old  # the oldest waited past admit_wait_ms
    assert take(_engine_stub(fresh, live=4, free=0)) == []
