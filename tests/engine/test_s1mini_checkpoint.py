"""Loading the openaudio-s1-mini directory layout, and refusing mismatched checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stream_workers.engine.base import SynthesisInput
from stream_workers.engine.s1mini import CheckpointError, S1MiniEngine, S1MiniSettings, tiny_checkpoint, tiny_codec_config
from stream_workers.engine.s1mini.codec_runner import build_codec
from stream_workers.engine.s1mini.tokenizer import ByteTokenizer, load_tokenizer


def write_checkpoint(path, engine: S1MiniEngine, tok: ByteTokenizer, *, lightning=False):
    """The engine's weights (its codec's as build_codec makes them) in the published layout."""
    return tiny_checkpoint.write_checkpoint(path, engine.config, engine.model.state_dict(),
                                            build_codec(engine.codec_spec).state_dict(), tok.special, lightning=lightning)


@pytest.fixture
def ckpt(tmp_path, make_engine, s1_tok):
    eng = make_engine()
    write_checkpoint(tmp_path / "ckpt", eng, s1_tok)
    return tmp_path / "ckpt", eng


def settings(d, **kw):
    return S1MiniSettings(checkpoint_dir=str(d), codec_config=tiny_codec_config(64), max_new_tokens=8,
                          on_max_tokens="truncate", **kw)


def test_loads_real_layout_and_matches_in_memory_model(ckpt, s1_tok):
    pytest.importorskip("tiktoken")  # the real BPE tokenizer needs it
    d, ref = ckpt
    tok = load_tokenizer(d)
    assert tok.encode("<|speaker:0|>hi") == s1_tok.encode("<|speaker:0|>hi")
    eng = S1MiniEngine(settings(d))  # the CPU default: the codec (loaded from codec.pth) in its own process
    try:
        assert eng.model_version.startswith("openaudio-s1-mini-")
        items = [SynthesisInput("a", "hello", temperature=0), SynthesisInput("b", "bye now", temperature=0)]
        got, want = eng.synthesize_batch(items), ref.synthesize_batch(items)
        for g, w in zip(got, want, strict=True):
            assert g.ok and w.ok
            np.testing.assert_allclose(g.audio, w.audio, atol=1e-5)
    finally:
        eng.close()


def test_lightning_layout_with_split_qkv(tmp_path, make_engine, s1_tok):
    ref = make_engine()
    write_checkpoint(tmp_path / "c", ref, s1_tok, lightning=True)
    eng = S1MiniEngine(settings(tmp_path / "c", codec_process="thread"), tokenizer=s1_tok)
    try:
        for k, v in ref.model.state_dict().items():
            assert torch.equal(v, eng.model.state_dict()[k]), k
    finally:
        eng.close()


def _expect_error(d, s1_tok, *needles):
    with pytest.raises(CheckpointError) as ei:
        S1MiniEngine(settings(d), tokenizer=s1_tok)
    for n in needles:
        assert n in str(ei.value), str(ei.value)
    return str(ei.value)


def test_missing_unexpected_and_misshaped_parameters_stop_startup(ckpt, s1_tok):
    d, _ = ckpt
    state = torch.load(d / "model.pth")
    state.pop("layers.1.feed_forward.w2.weight")
    state["layers.9.attention.wqkv.weight"] = torch.zeros(2, 2)
    state["norm.weight"] = torch.ones(3)
    torch.save(state, d / "model.pth")
    msg = _expect_error(d, s1_tok, "missing (1): layers.1.feed_forward.w2.weight",
                        "unexpected (1): layers.9.attention.wqkv.weight", "norm.weight: checkpoint (3,) vs model (64,)")
    assert "model.pth" in msg


def test_codec_mismatch_and_missing_files(ckpt, s1_tok):
    d, _ = ckpt
    codec = torch.load(d / "codec.pth")
    codec.pop("decoder.model.0.conv.parametrizations.weight.original1")  # half a weight-norm pair
    codec.pop("quantizer.quantizer.quantizers.3.codebook.weight")
    torch.save(codec, d / "codec.pth")
    _expect_error(d, s1_tok, "codec.pth", "missing (2)", "quantizer.quantizer.quantizers.3.codebook.weight",
                  "decoder.model.0.conv.weight", "unexpected (1): decoder.model.0.conv.weight_g")
    (d / "codec.pth").unlink()
    _expect_error(d, s1_tok, "codec.pth", "not found")
    (d / "model.pth").unlink()
    _expect_error(d, s1_tok, "no model.pth")
    _expect_error(d / "nope", s1_tok, "does not exist")


def test_missing_tokenizer_files(ckpt):
    d, _ = ckpt
    (d / "tokenizer.tiktoken").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.tiktoken"):
        S1MiniEngine(settings(d))


def test_settings_require_a_checkpoint():
    with pytest.raises(ValueError, match="checkpoint_dir"):
        S1MiniSettings()


def test_settings_select_s1mini_and_a_missing_checkpoint_stops_start_up(tmp_path) -> None:
    from stream_workers.engine import build_engine
    from stream_workers.engine.s1mini import CheckpointError
    from voicenote.settings import EngineKind, EngineSettings

    with pytest.raises(CheckpointError, match="S1MINI_CHECKPOINT_DIR"):
        build_engine(EngineSettings(kind=EngineKind.s1mini))
    with pytest.raises(CheckpointError, match="does not exist"):
        build_engine(EngineSettings(kind=EngineKind.s1mini, s1mini_checkpoint_dir=tmp_path / "nowhere"))


def test_the_tiny_checkpoint_command_writes_what_the_worker_loads_as_it_is(tmp_path, capsys) -> None:
    pytest.importorskip("tiktoken")  # the checkpoint's BPE tokenizer needs it
    from ops.cli import main
    from stream_workers.engine import build_engine
    from voicenote.settings import EngineKind, EngineSettings

    d = tmp_path / "tiny"
    assert main(["s1mini", "tiny-checkpoint", str(d)]) == 0
    assert f"VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR={d}" in capsys.readouterr().out
    assert {p.name for p in d.iterdir()} == set(tiny_checkpoint.FILES)
    # The settings the worker builds from, and nothing else: codec_config.json gives the codec's shapes.
    engine = build_engine(EngineSettings(kind=EngineKind.s1mini, s1mini_checkpoint_dir=d, s1mini_max_new_tokens=8,
                                         s1mini_on_max_tokens="truncate", s1mini_codec_process="thread"))
    try:
        assert engine.model_version.startswith("openaudio-s1-mini-")
        (out,) = engine.synthesize_batch([SynthesisInput("a", "hello", temperature=0.7, seed=1)])
        assert out.ok and out.audio.size > 0 and np.abs(out.audio).max() * 32767 > 1  # audible in 16-bit WAV
    finally:
        engine.close()
    assert main(["s1mini", "tiny-checkpoint", str(d)]) == 2  # never overwrites a checkpoint unasked
    assert "--force" in capsys.readouterr().err
    assert main(["s1mini", "tiny-checkpoint", str(d), "--force", "--seed", "8"]) == 0
