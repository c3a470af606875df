"""Parity with fish-speech's own model code (the optional reference), same random weights.

The reference is fish-speech's PyPI wheel installed without its heavy dependencies:
    pip install --no-deps fish-speech==0.1.0 descript-audio-codec==1.0.0
    pip install einops loguru tiktoken
Modules it imports only for I/O, training or tokenizer loading (transformers, loralib, hydra,
librosa, soundfile, omegaconf, audiotools, dac's package __init__) are replaced by empty stand-ins;
none of them takes part in the forward math. dac's real ``dac/nn/layers.py`` and ``quantize.py``
(Snake1d, weight-normed convs, the RVQ) are imported from the installed package files.
Skipped cleanly when the reference is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from functools import partial
from pathlib import Path

import pytest
import torch

from stream_workers.engine.s1mini.checkpoint import check_state, normalize_codec_state, normalize_llama_state
from stream_workers.engine.s1mini.codec import CodecDecoder
from stream_workers.engine.s1mini.config import tiny_codec_config, tiny_config
from stream_workers.engine.s1mini.model import DualARTransformer
from stream_workers.engine.s1mini.tokenizer import ByteTokenizer

pytest.importorskip("einops")
pytest.importorskip("loguru")
pytest.importorskip("tiktoken")
if importlib.util.find_spec("fish_speech") is None or importlib.util.find_spec("dac") is None:
    pytest.skip("fish-speech reference not installed", allow_module_level=True)

LOGIT_ATOL = 1e-5  # fp32; observed: prefill 0, cached batched decode 1.5e-7 (run with -s to print)
AUDIO_ATOL = 1e-6  # observed 3.7e-8 on audio of rms 0.05


def _stub(name: str, **attrs) -> types.ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def _package(name: str, path: Path) -> None:
    if name in sys.modules and getattr(sys.modules[name], "__path__", None):
        return
    m = types.ModuleType(name)
    m.__path__ = [str(path)]
    sys.modules[name] = m


@pytest.fixture(scope="module")
def ref_llama():
    if importlib.util.find_spec("transformers") is None:
        _stub("transformers", AutoTokenizer=None)
    if importlib.util.find_spec("loralib") is None:
        _stub("loralib")
    return importlib.import_module("fish_speech.models.text2semantic.llama")


@pytest.fixture(scope="module")
def ref_dac():
    import torch.nn as nn

    dac_dir = Path(importlib.util.find_spec("dac").submodule_search_locations[0])
    # dac/__init__ pulls in audiotools and the whole codec package; load only dac.nn.* for real.
    _package("dac", dac_dir)
    _package("dac.nn", dac_dir / "nn")
    _package("dac.model", dac_dir / "model")

    class CodecMixin:  # compress/decompress helpers only; get_delay feeds no decode math
        def get_delay(self):
            return 0

    class BaseModel(nn.Module):
        INTERN: list = []
        EXTERN: list = []

    _stub("dac.model.base", CodecMixin=CodecMixin)
    audiotools = _stub("audiotools", AudioSignal=object)
    audiotools.ml = _stub("audiotools.ml", BaseModel=BaseModel)
    for name in ("hydra", "librosa", "soundfile", "omegaconf"):
        _stub(name, OmegaConf=None) if name == "omegaconf" else _stub(name)
    modded = importlib.import_module("fish_speech.models.dac.modded_dac")
    rvq = importlib.import_module("fish_speech.models.dac.rvq")
    return modded, rvq


def _tok():
    return ByteTokenizer(num_semantic=64)


def _ref_tokenizer(tok):
    ids = {i: tok.semantic_begin_id + i for i in range(tok.num_semantic)}
    return types.SimpleNamespace(
        semantic_id_to_token_id=ids, semantic_begin_id=tok.semantic_begin_id, semantic_end_id=tok.semantic_end_id
    )


def _ref_args(ref_llama, cfg):
    d = cfg.to_dict()
    d.pop("model_type")
    return ref_llama.DualARModelArgs(**d, use_gradient_checkpointing=False)


def _prompt(tok, text, n_frames, seed):
    g = torch.Generator().manual_seed(seed)
    ids = [tok.token_id("<|interleave|>")] + tok.encode("<|speaker:0|>" + text)
    codes = torch.randint(0, 32, (10, n_frames), generator=g)
    codes[0] = torch.randint(0, 64, (n_frames,), generator=g)
    p = torch.zeros(11, len(ids) + n_frames + 1, dtype=torch.long)
    p[0, : len(ids)] = torch.tensor(ids)
    p[0, len(ids) : len(ids) + n_frames] = codes[0] + tok.semantic_begin_id
    p[1:, len(ids) : len(ids) + n_frames] = codes
    p[0, -1] = tok.im_end_id
    return p


@pytest.fixture(scope="module")
def models(ref_llama):
    tok = _tok()
    cfg = tiny_config(tok.vocab_size, 64)
    ours = DualARTransformer(cfg, tok.semantic_begin_id, tok.semantic_end_id).init_random(1).eval()
    for name, p in ours.named_parameters():  # norms too, so they are not all ones
        if "norm" in name:
            torch.nn.init.normal_(p, 1.0, 0.1)
    ref = ref_llama.DualARTransformer(_ref_args(ref_llama, cfg), tokenizer=_ref_tokenizer(tok)).eval()
    # the hand check of the parameter-name layout: identical names and shapes, nothing left over
    check_state(ref, normalize_llama_state(ours.state_dict()), "reference")
    ref.load_state_dict(ours.state_dict(), strict=True)
    return tok, cfg, ours, ref


def test_parameter_layout_matches_reference(models):
    _, _, ours, ref = models
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())


@torch.inference_mode()
def test_prefill_logits_match_reference(models):
    tok, cfg, ours, ref = models
    prompts = [_prompt(tok, "hello world", 5, 0), _prompt(tok, "hi", 2, 1), _prompt(tok, "a longer line of text", 7, 2)]
    worst = 0.0
    for p in prompts:
        ref_logits = ref_llama_all_logits(ref, p)
        pos = torch.arange(p.shape[1])[None]
        ours_logits, _ = ours.forward_slow(p[None], pos, None, return_all=True)
        worst = max(worst, (ours_logits[0] - ref_logits).abs().max().item())
    print(f"prefill logits max abs diff: {worst:.3e}")
    assert worst < LOGIT_ATOL


def ref_llama_all_logits(ref, p):
    # the base class's method has return_all; DualARTransformer's override does not pass it on
    out = type(ref).__mro__[1].forward_generate(ref, p[None].int(), return_all=True)
    return out.logits[0]


@torch.inference_mode()
def test_cached_batched_decode_matches_reference(models):
    """Teacher-forced: our left-padded batch with the KV cache vs the reference one row at a time
    with its own KV cache (max_batch_size=1), slow logits and fast logits at every step."""
    tok, cfg, ours, ref = models
    prompts = [_prompt(tok, "hello world", 5, 0), _prompt(tok, "hi", 2, 1), _prompt(tok, "a longer line of text", 7, 2)]
    steps = 4
    g = torch.Generator().manual_seed(5)
    frames = []
    for _ in prompts:
        f = torch.randint(0, 32, (steps, 11), generator=g)
        f[:, 1] = torch.randint(0, 64, (steps,), generator=g)
        f[:, 0] = f[:, 1] + tok.semantic_begin_id
        frames.append(f)

    # ---- ours, batched
    B, lens = len(prompts), [p.shape[1] for p in prompts]
    L = max(lens)
    toks = torch.zeros(B, 11, L, dtype=torch.long)
    for b, p in enumerate(prompts):
        toks[b, :, L - lens[b] :] = p
    pad = torch.tensor([L - n for n in lens])
    cols = torch.arange(L)
    pos = (cols[None] - pad[:, None]).clamp(min=0)
    key_ok = cols[None, None] >= pad[:, None, None]
    mask = ((torch.tril(torch.ones(L, L, dtype=torch.bool))[None] & key_ok) | torch.eye(L, dtype=torch.bool)[None])[:, None]
    cache = ours.new_cache(B, L + steps + 1, torch.float32, "cpu")
    logits, hidden = ours.forward_slow(toks, pos, mask, cache, 0)
    ours_slow, ours_fast = [logits], []
    valid = key_ok[:, 0]
    next_pos = torch.tensor(lens)
    for t in range(steps):
        frame = torch.stack([f[t] for f in frames])
        fc = ours.new_fast_cache(B, torch.float32, "cpu")
        x = ours.fast_project_in(hidden)[:, None]
        step_fast = [ours.forward_fast(x, 0, fc)]
        for k in range(1, 10):
            step_fast.append(ours.forward_fast(ours.fast_embeddings(frame[:, k])[:, None], k, fc))
        ours_fast.append(torch.stack(step_fast, 1))
        valid = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool)], 1)
        logits, hidden = ours.forward_slow(frame[:, :, None], next_pos[:, None], valid[:, None, None], cache, L + t)
        next_pos = next_pos + 1
        ours_slow.append(logits)

    # ---- reference, one row at a time
    worst_slow = worst_fast = 0.0
    for b, p in enumerate(prompts):
        ref.max_seq_len = ref.max_batch_size = -1
        ref.setup_caches(max_batch_size=1, max_seq_len=cfg.max_seq_len, dtype=torch.float32)
        n = p.shape[1]
        out = ref.forward_generate(p[None].int(), torch.arange(n))
        worst_slow = max(worst_slow, (out.logits[0, -1] - ours_slow[0][b]).abs().max().item())
        hidden = out.hidden_states
        for t in range(steps):
            f = frames[b][t]
            for layer in ref.fast_layers:
                layer.attention.kv_cache.k_cache.zero_()
                layer.attention.kv_cache.v_cache.zero_()
            fl = [ref.forward_generate_fast(hidden, torch.tensor([0]))[0, -1]]
            for k in range(1, 10):
                fl.append(ref.forward_generate_fast(ref.fast_embeddings(f[k : k + 1]), torch.tensor([k]))[0, -1])
            worst_fast = max(worst_fast, (torch.stack(fl) - ours_fast[t][b]).abs().max().item())
            out = ref.forward_generate(f.view(1, 11, 1).int(), torch.tensor([n + t]))
            hidden = out.hidden_states
            worst_slow = max(worst_slow, (out.logits[0, -1] - ours_slow[t + 1][b]).abs().max().item())
    print(f"cached batched decode: slow logits max abs diff {worst_slow:.3e}, fast logits {worst_fast:.3e}")
    assert worst_slow < LOGIT_ATOL
    assert worst_fast < LOGIT_ATOL


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("original0") or name.endswith("weight_g"):  # weight-norm gains: keep the net contractive
                p.copy_(0.3 + 0.2 * torch.rand(p.shape, generator=g))
            elif "alpha" in name or "norm" in name:
                p.copy_(1.0 + 0.2 * torch.rand(p.shape, generator=g))
            elif name.endswith("gamma"):
                p.copy_(0.5 * torch.rand(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g) / max(1, p.shape[-1] ** 0.5) if p.dim() > 1 else 0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def codecs(ref_dac):
    modded, rvq = ref_dac
    cc = tiny_codec_config(64)
    margs = dict(
        block_size=4096, n_layer=cc.post_n_layer, n_head=cc.post_n_head, dim=cc.post_dim,
        intermediate_size=cc.post_intermediate_size, n_local_heads=-1, head_dim=cc.post_head_dim,
        rope_base=cc.post_rope_base, norm_eps=cc.post_norm_eps, dropout_rate=0.1, attn_dropout_rate=0.1,
        channels_first=True,
    )

    def post():
        return modded.WindowLimitedTransformer(
            causal=True, window_size=cc.post_window_size, input_dim=cc.latent_dim, config=modded.ModelArgs(**margs)
        )

    q = rvq.DownsampleResidualVectorQuantize(
        input_dim=cc.latent_dim, n_codebooks=cc.n_codebooks, codebook_size=cc.codebook_size,
        codebook_dim=cc.codebook_dim, quantizer_dropout=0.5, downsample_factor=list(cc.downsample_factor),
        post_module=post(), pre_module=post(), semantic_codebook_size=cc.semantic_codebook_size,
    )
    ref = modded.DAC(
        encoder_dim=cc.latent_dim // 16, encoder_rates=[2, 4, 8, 8], decoder_dim=cc.decoder_dim,
        decoder_rates=list(cc.decoder_rates), quantizer=q, sample_rate=44100, causal=True,
        encoder_transformer_layers=[0, 0, 0, 0], decoder_transformer_layers=[0, 0, 0, 0],
        transformer_general_config=partial(modded.ModelArgs, **{k: v for k, v in margs.items() if k not in ("n_layer", "n_head", "dim", "intermediate_size")}),
    )
    _randomize(ref, 3)
    ref.eval()
    ours = CodecDecoder(cc)
    state = normalize_codec_state(ref.state_dict())  # weight_g/v and parametrizations folded
    check_state(ours, state, "codec")
    ours.load_state_dict(state, strict=True)
    ours.eval()
    return cc, ours, ref


@torch.inference_mode()
def test_codec_audio_matches_reference(codecs):
    cc, ours, ref = codecs
    g = torch.Generator().manual_seed(9)
    T = 12
    codes = torch.randint(0, cc.codebook_size, (2, 10, T), generator=g)
    codes[:, 0] = torch.randint(0, cc.semantic_codebook_size, (2, T), generator=g)
    ref_audio, lengths = ref.decode(codes, torch.tensor([T, T]))
    ours_audio = ours(codes)
    assert ours_audio.shape == (2, T * 2048) == ref_audio[:, 0].shape
    diff = (ours_audio - ref_audio[:, 0]).abs().max().item()
    print(f"codec audio max abs diff: {diff:.3e} (audio rms {ref_audio.pow(2).mean().sqrt().item():.3e})")
    assert diff < AUDIO_ATOL


# ---------------------------------------------------------------- the codec's encode path
def _encoder_config():
    """Tiny shapes with an encoder transformer: widths 4 -> 64 (one 64-wide head after the last block)."""
    from dataclasses import replace

    return replace(tiny_codec_config(64), latent_dim=64, encoder_dim=4, encoder_transformer_layers=(0, 0, 0, 1),
                   encoder_window_size=16)


@pytest.fixture(scope="module")
def encoders(ref_dac):
    modded, rvq = ref_dac
    cc = _encoder_config()
    margs = dict(
        block_size=4096, n_layer=cc.post_n_layer, n_head=cc.post_n_head, dim=cc.post_dim,
        intermediate_size=cc.post_intermediate_size, n_local_heads=-1, head_dim=cc.post_head_dim,
        rope_base=cc.post_rope_base, norm_eps=cc.post_norm_eps, dropout_rate=0.1, attn_dropout_rate=0.1,
        channels_first=True,
    )

    def window():
        return modded.WindowLimitedTransformer(
            causal=True, window_size=cc.post_window_size, input_dim=cc.latent_dim, config=modded.ModelArgs(**margs)
        )

    q = rvq.DownsampleResidualVectorQuantize(
        input_dim=cc.latent_dim, n_codebooks=cc.n_codebooks, codebook_size=cc.codebook_size,
        codebook_dim=cc.codebook_dim, quantizer_dropout=0.5, downsample_factor=list(cc.downsample_factor),
        post_module=window(), pre_module=window(), semantic_codebook_size=cc.semantic_codebook_size,
    )
    general = {k: v for k, v in margs.items() if k not in ("n_layer", "n_head", "dim", "intermediate_size")}
    general["head_dim"] = cc.encoder_head_dim
    ref = modded.DAC(
        encoder_dim=cc.encoder_width, encoder_rates=list(cc.encoder_rates), decoder_dim=cc.decoder_dim,
        decoder_rates=list(cc.decoder_rates), quantizer=q, sample_rate=44100, causal=True,
        encoder_transformer_layers=list(cc.encoder_transformer_layers), decoder_transformer_layers=[0, 0, 0, 0],
        transformer_general_config=partial(modded.ModelArgs, **general),
    )
    # the reference hard-codes the encoder block transformer's window (512): set ours to match that instance
    ref.encoder.block[4].block[5].window_size = cc.encoder_window_size
    _randomize(ref, 4)
    with torch.no_grad():  # random biases add up to a constant latent that maps every frame to one entry
        for name, p in ref.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    ref.eval()
    from stream_workers.engine.s1mini.codec_encoder import CodecEncoder

    ours = CodecEncoder(cc)
    state = normalize_codec_state(ref.state_dict(), encoder=True)
    decoder_keys = set(CodecDecoder(cc).state_dict())
    encoder_state = {k: v for k, v in state.items() if k in ours.state_dict()}
    # every key of the reference is the encoder's or the decoder's, none is left over
    assert set(state) == set(encoder_state) | decoder_keys
    check_state(ours, encoder_state, "codec encoder")
    ours.load_state_dict(encoder_state, strict=True)
    ours.eval()
    return cc, ours, ref


@pytest.mark.parametrize("n_samples", [2048 * 3, 2048 * 5 + 700, 2048 * 9 + 1])
@torch.inference_mode()
def test_codec_encoder_codes_match_reference(encoders, n_samples):
    cc, ours, ref = encoders
    g = torch.Generator().manual_seed(n_samples)
    audio = 0.3 * torch.randn(2, n_samples, generator=g).clamp(-3, 3)
    ref_codes, ref_lens = ref.encode(audio)
    codes, latent, latents = ours.encode(audio)
    frames = -(-n_samples // 2048)
    assert codes.shape == (2, 10, frames) == ref_codes.shape
    assert int(ref_lens[0]) == frames
    # the pre-quantization latent and the projected latents, as the reference computes them
    x = torch.nn.functional.pad(audio, (0, frames * 2048 - n_samples))[:, None]
    ref_z = ref.quantizer.pre_module(ref.quantizer.downsample(ref.encoder(x)))
    ref_vq = ref.quantizer(ref.encoder(x))
    diff = (latent - ref_z).abs().max().item()
    print(f"encoder latent max abs diff {diff:.3e} (rms {ref_z.pow(2).mean().sqrt().item():.3e})")
    assert diff < 1e-5
    assert (latents - ref_vq.latents).abs().max().item() < 1e-5
    assert torch.equal(codes, ref_codes)
    # the codes use every row's range, not a constant: random weights still spread them
    assert codes[:, 0].unique().numel() > 1 and codes[:, 1:].unique().numel() > 1
    # and one clip alone gives the same codes as in the batch (causal padding)
    one = ours.encode_clip(audio[1].numpy())
    assert one.shape == (10, frames) and (one == ref_codes[1].numpy()).all()


def test_codec_encoder_rejects_bad_audio(encoders):
    _, ours, _ = encoders
    with pytest.raises(ValueError, match="mono"):
        ours.encode_clip(torch.zeros(2, 100).numpy())
    with pytest.raises(ValueError, match="NaN"):
        ours.encode_clip(torch.full((100,), float("nan")).numpy())
    with pytest.raises(ValueError, match="empty"):
        ours.encode(torch.zeros(1, 0))


def test_codec_encoder_layout_matches_reference_at_real_shapes(ref_dac):
    """The published codec's shapes (modded_dac_vq.yaml), built on the meta device: the encoder's parameter
    names and shapes are exactly the reference's encode-side ones."""
    from stream_workers.engine.s1mini.codec_encoder import CodecEncoder
    from stream_workers.engine.s1mini.config import s1mini_codec_config

    modded, rvq = ref_dac
    cc = s1mini_codec_config()
    margs = dict(block_size=4096, n_layer=8, n_head=16, dim=1024, intermediate_size=3072, n_local_heads=-1, head_dim=64,
                 rope_base=10000, norm_eps=1e-5, dropout_rate=0.1, attn_dropout_rate=0.1, channels_first=True)
    general = dict(block_size=16384, n_local_heads=-1, head_dim=64, rope_base=10000, norm_eps=1e-5, dropout_rate=0.1,
                   attn_dropout_rate=0.1, channels_first=True)
    with torch.device("meta"):
        def window():
            return modded.WindowLimitedTransformer(causal=True, window_size=128, input_dim=1024, config=modded.ModelArgs(**margs))

        q = rvq.DownsampleResidualVectorQuantize(input_dim=1024, n_codebooks=9, codebook_size=1024, codebook_dim=8,
                                                 quantizer_dropout=0.5, downsample_factor=[2, 2], post_module=window(),
                                                 pre_module=window(), semantic_codebook_size=4096)
        ref = modded.DAC(encoder_dim=64, encoder_rates=[2, 4, 8, 8], decoder_dim=1536, decoder_rates=[8, 8, 4, 2],
                         quantizer=q, sample_rate=44100, causal=True, encoder_transformer_layers=[0, 0, 0, 4],
                         decoder_transformer_layers=[0, 0, 0, 0],
                         transformer_general_config=partial(modded.ModelArgs, **general))
        ours = CodecEncoder(cc)
    state = normalize_codec_state(ref.state_dict(), encoder=True)
    mine = ours.state_dict()
    encode_side = {k: v for k, v in state.items() if k in mine}
    check_state(ours, encode_side, "codec encoder")
    left = sorted(k for k in state if k not in mine and (k.startswith("encoder.") or ".in_proj." in k
                                                        or k.startswith(("quantizer.downsample.", "quantizer.pre_module."))))
    assert left == []
    params = sum(v.numel() for k, v in mine.items() if k.startswith(("encoder.", "quantizer.downsample.", "quantizer.pre_module.")))
    print(f"codec encoder at real shapes: {params / 1e6:.1f} M parameters (without the shared codebooks)")
    assert any(".block.5.layers.3." in k for k in mine)  # the 4 transformer layers after the last encoder block
