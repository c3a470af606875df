"""Loading the openaudio-s1-mini directory layout, and refusing mismatched checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stream_workers.engine.base import SynthesisInput
from stream_workers.engine.s1mini import CheckpointError, S1MiniEngine, S1MiniSettings, tiny_codec_config
from stream_workers.engine.s1mini.codec_runner import build_codec
from stream_workers.engine.s1mini.tokenizer import ByteTokenizer, load_tokenizer


def unfold_weight_norm(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = w.flatten(1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))
    return g, w * 3.0  # v is only defined up to scale


def write_checkpoint(path, engine: S1MiniEngine, tok: ByteTokenizer, *, lightning=False):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(engine.config.to_dict()))
    state = {k: v.clone() for k, v in engine.model.state_dict().items()}
    if lightning:  # LightningModule layout: {"state_dict": {"model.<name>": ...}} and split q/k/v
        wqkv = state.pop("layers.0.attention.wqkv.weight")
        c = engine.config
        q, k, v = wqkv.split([c.n_head * c.head_dim, c.n_local_heads * c.head_dim, c.n_local_heads * c.head_dim])
        state.update({"layers.0.attention.wq.weight": q, "layers.0.attention.wk.weight": k, "layers.0.attention.wv.weight": v})
        state = {"state_dict": {"model." + k: v for k, v in state.items()}}
    torch.save(state, path / "model.pth")
    codec = {}
    for k, v in build_codec(engine.codec_spec).state_dict().items():  # the engine's codec weights
        if k.startswith("decoder.") and k.endswith("conv.weight"):  # CausalWNConv1d: parametrizations
            g, vv = unfold_weight_norm(v)
            base = k[: -len("weight")]
            codec[base + "parametrizations.weight.original0"] = g
            codec[base + "parametrizations.weight.original1"] = vv
        elif k.endswith("out_proj.weight"):  # dac's WNConv1d: weight_g / weight_v
            g, vv = unfold_weight_norm(v)
            codec[k + "_g"], codec[k + "_v"] = g, vv
        else:
            codec[k] = v.clone()
    # encode-side weights and saved buffers that a real codec.pth carries (ignored by the loader)
    codec["encoder.block.0.conv.weight_g"] = torch.ones(4, 1, 1)
    codec["quantizer.semantic_quantizer.quantizers.0.in_proj.weight_v"] = torch.ones(4, 32, 1)
    codec["quantizer.post_module.freqs_cis"] = torch.zeros(8, 8, 2)
    codec["quantizer.post_module.causal_mask"] = torch.ones(8, 8, dtype=torch.bool)
    torch.save(codec, path / "codec.pth")
    lines = [f"{__import__('base64').b64encode(bytes([i])).decode()} {i}" for i in range(256)]
    (path / "tokenizer.tiktoken").write_text("\n".join(lines) + "\n")
    (path / "special_tokens.json").write_text(json.dumps(tok.special))


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
    eng = S1MiniEngine(settings(d))
    assert eng.model_version.startswith("openaudio-s1-mini-")
    items = [SynthesisInput("a", "hello", temperature=0), SynthesisInput("b", "bye now", temperature=0)]
    got, want = eng.synthesize_batch(items), ref.synthesize_batch(items)
    for g, w in zip(got, want, strict=True):
        assert g.ok and w.ok
        np.testing.assert_allclose(g.audio, w.audio, atol=1e-5)


def test_lightning_layout_with_split_qkv(tmp_path, make_engine, s1_tok):
    ref = make_engine()
    write_checkpoint(tmp_path / "c", ref, s1_tok, lightning=True)
    eng = S1MiniEngine(settings(tmp_path / "c"), tokenizer=s1_tok)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, eng.model.state_dict()[k]), k


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
