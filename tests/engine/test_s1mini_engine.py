"""S1MiniEngine behind the SpeechEngine interface: results per item, errors per item, OOM, voices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stream_workers.engine.base import EngineOutOfMemory, SynthesisInput


def test_interface_and_audio(make_engine):
    eng = make_engine()
    assert eng.name == "s1mini" and eng.sample_rate == 44100 and eng.model_version
    assert eng.voices() == ["default"]
    res = eng.synthesize_batch(
        [SynthesisInput("a", "hello world", temperature=0), SynthesisInput("b", "hi", seed=3), SynthesisInput("c", "  ")]
    )
    assert [r.job_id for r in res] == ["a", "b", "c"]
    for r in res[:2]:
        assert r.ok and r.sample_rate == 44100
        assert r.audio.dtype == np.float32 and r.audio.ndim == 1
        assert r.audio.shape[0] == 8 * 2048 and np.abs(r.audio).max() <= 1.0
        assert r.extra["frames"] == 8
    assert res[2].error.code == "invalid_input"


def test_batched_audio_equals_single(make_engine):
    eng = make_engine(max_new_tokens=6)
    items = [SynthesisInput(f"j{i}", t, temperature=0) for i, t in enumerate(["one", "two words", "three little words"])]
    batched = eng.synthesize_batch(items)
    for item, got in zip(items, batched, strict=True):
        alone = eng.synthesize_batch([item])[0]
        np.testing.assert_allclose(got.audio, alone.audio, atol=1e-5)


def test_codec_batch_of_different_lengths_equals_rows(s1_codec):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 32, (10, n), generator=g) for n in (3, 7, 1)]
    together = s1_codec.decode_rows(rows, max_batch=8)
    for r, a in zip(rows, together, strict=True):
        alone = s1_codec.decode_rows([r])[0]
        assert a.shape == (r.shape[1] * 2048,)
        torch.testing.assert_close(a, alone, atol=1e-5, rtol=0)


def test_max_tokens_exceeded_is_per_item(make_engine):
    eng = make_engine(on_max_tokens="error", max_new_tokens=4)
    res = eng.synthesize_batch([SynthesisInput("a", "runs on", temperature=0), SynthesisInput("b", "")])
    assert res[0].error.code == "max_tokens_exceeded"
    assert res[1].error.code == "invalid_input"


def test_prompt_longer_than_context(make_engine):
    eng = make_engine()
    res = eng.synthesize_batch([SynthesisInput("long", "x" * 600), SynthesisInput("ok", "short", temperature=0)])
    assert res[0].error.code == "max_tokens_exceeded"
    assert res[1].ok


def test_bad_sampling_parameters(make_engine):
    res = make_engine().synthesize_batch([SynthesisInput("a", "hi", top_p=0.0), SynthesisInput("b", "hi", temperature=0)])
    assert res[0].error.code == "invalid_input" and res[1].ok


def test_oom_in_a_step_fails_the_live_rows_and_synthesize_batch_raises(make_engine, monkeypatch):
    eng = make_engine()
    real_step = eng.decoder.step
    calls = []

    def boom():
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step()

    monkeypatch.setattr(eng.decoder, "step", boom)
    with pytest.raises(EngineOutOfMemory):
        eng.synthesize_batch([SynthesisInput("a", "hi"), SynthesisInput("b", "there")])
    assert eng.decoder.free_slots() == eng.slots  # the failed rows left their slots
    assert eng.synthesize_batch([SynthesisInput("c", "again", temperature=0)])[0].ok  # the engine goes on


def test_other_failures_are_per_item_engine_errors(make_engine, monkeypatch):
    eng = make_engine()
    monkeypatch.setattr(eng.decoder, "add", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad")))
    res = eng.synthesize_batch([SynthesisInput("a", "hi"), SynthesisInput("b", "")])
    assert res[0].error.code == "engine_error" and "bad" in str(res[0].error)
    assert res[1].error.code == "invalid_input"


def test_reference_voices_and_lru(tmp_path, make_engine):
    voices = tmp_path / "voices"
    (voices / "alice").mkdir(parents=True)
    (voices / "alice" / "prompt.txt").write_text("This is Alice speaking.")
    codes = np.random.default_rng(0).integers(0, 32, size=(10, 6))
    np.save(voices / "alice" / "codes.npy", codes)
    (voices / "broken").mkdir()
    (voices / "broken" / "prompt.txt").write_text("x")
    np.save(voices / "broken" / "codes.npy", np.zeros((3, 2), dtype=np.int64))
    eng = make_engine(voices_dir=str(voices), voice_cache_size=1)
    assert eng.voices() == ["default", "alice", "broken"]
    p = eng.build_prompt("hello", "alice")
    tok = eng.tokenizer
    # layout: <|interleave|> speaker + prompt text, 6 reference frames, <|im_end|>, speaker + text
    n_text = 1 + len(tok.encode("<|speaker:0|>This is Alice speaking."))
    assert p[0, 0] == tok.token_id("<|interleave|>")
    assert torch.equal(p[0, n_text : n_text + 6], torch.from_numpy(codes[0]) + tok.semantic_begin_id)
    assert torch.equal(p[1:, n_text : n_text + 6], torch.from_numpy(codes))
    assert p[0, n_text + 6] == tok.im_end_id and (p[1:, : n_text] == 0).all()
    res = eng.synthesize_batch(
        [
            SynthesisInput("a", "hi", voice="alice", temperature=0),
            SynthesisInput("b", "hi", voice="nobody"),
            SynthesisInput("c", "hi", voice="broken"),
            SynthesisInput("d", "hi", voice="alice", temperature=0),
        ]
    )
    assert res[0].ok and res[3].ok
    np.testing.assert_allclose(res[0].audio, res[3].audio, atol=1e-6)
    assert res[1].error.code == "unknown_voice" and res[2].error.code == "unknown_voice"
    reg = eng.voice_registry
    assert reg.hits >= 2 and reg.misses == 1  # alice built once, then served from the LRU


def test_continuous_submit_rows_leave_independently(make_engine):
    # a 64-column KV capacity: the long prompt leaves room for only a few frames, the short one for 40
    eng = make_engine(max_new_tokens=40, slots=4, kv_capacity=64)
    assert eng.wait_ready(60) and eng.ready
    first = eng.submit([SynthesisInput("runs", "hi", temperature=0)])[0]
    early, bad = eng.submit([SynthesisInput("early", "a prompt that fills most of the cache", temperature=0),
                             SynthesisInput("bad", " ")])
    assert bad.result(60).error.code == "invalid_input"
    e_res, r_res = early.result(60), first.result(60)
    assert e_res.ok and r_res.ok
    assert r_res.extra["frames"] == 40 and e_res.extra["frames"] < 30
    # the early row left its slot (and went to the codec) many steps before its batch-mate
    assert e_res.extra["decode_step_at_finish"] < r_res.extra["decode_step_at_finish"]
    alone = make_engine(max_new_tokens=40, kv_capacity=64).synthesize_batch([early_input := SynthesisInput(
        "early", "a prompt that fills most of the cache", temperature=0)])[0]
    assert early_input.job_id == alone.job_id
    np.testing.assert_allclose(e_res.audio, alone.audio, atol=1e-5)


def test_more_rows_than_slots_queue_and_close_finishes_them(make_engine):
    eng = make_engine(max_new_tokens=5, slots=2)
    futures = eng.submit([SynthesisInput(f"j{i}", f"row number {i}", temperature=0) for i in range(5)])
    eng.close()
    results = [f.result(0) for f in futures]
    assert [r.job_id for r in results] == [f"j{i}" for i in range(5)] and all(r.ok for r in results)
    assert eng.stats.codec_rows == 5 and eng.stats.steps >= 5 * 5 / 2
    late = eng.submit([SynthesisInput("late", "after close")])[0].result(0)
    assert late.error.code == "engine_unavailable"


def test_bf16_codec_setting(make_engine):
    eng = make_engine(codec_dtype="bfloat16", max_new_tokens=3)
    assert eng.codec_runner.dtype == torch.bfloat16
    res = eng.synthesize_batch([SynthesisInput("a", "hi", temperature=0)])[0]
    assert res.ok and res.audio.dtype == np.float32 and res.audio.shape == (3 * 2048,)
    with pytest.raises(ValueError):
        make_engine(codec_dtype="int8")
