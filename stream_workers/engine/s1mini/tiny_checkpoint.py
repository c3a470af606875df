"""Writing an openaudio-s1-mini checkpoint directory: a tiny random one, for trying the path without weights.

``voicenote s1mini tiny-checkpoint DIR`` calls :func:`write_tiny_checkpoint`; the tests write their
checkpoints with :func:`write_checkpoint`. The layout is the published one (docs/s1mini.md, "Checkpoint
layout and loading"):

  config.json            the model's shapes
  model.pth              the LLaMA part's state dict
  codec.pth              the codec, encoder and decoder, with weight norm unfolded as in the published
                         file (plus saved buffers the loader must ignore)
  tokenizer.tiktoken     one BPE rank per byte (so it encodes exactly as :class:`ByteTokenizer`)
  special_tokens.json    {token: id}

plus ``codec_config.json``, the codec's shapes, which the published checkpoint does not have (its codec
is always the 184 M one): the worker reads it beside ``codec.pth`` (``_codec_config`` in
stream_workers/engine/__init__.py), so the tiny checkpoint loads with no other setting.

Random weights say nothing: the audio is noise, and the model rarely ends an item by itself, so run the
worker with ``VOICENOTE_ENGINE__S1MINI_MAX_NEW_TOKENS=24`` and ``VOICENOTE_ENGINE__S1MINI_ON_MAX_TOKENS=truncate``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import CodecConfig, DualARConfig, tiny_codec_config, tiny_config
from .tokenizer import ByteTokenizer

#: The files :func:`write_checkpoint` writes (``codec_config.json`` only when given a codec config).
FILES = ("config.json", "model.pth", "codec.pth", "tokenizer.tiktoken", "special_tokens.json", "codec_config.json")
N_SEMANTIC = 64  # semantic codebook of the tiny model and codec
# Random codec weights speak at about 1e-7, below one step of 16-bit audio; the output layer is scaled by
# this so that the audio that comes back is audible noise, and two samplings give two different WAVs.
LOUDNESS = 1e6

#: Settings a worker on the tiny checkpoint needs besides the directory (printed by the command, used by the tests).
WORKER_ENV = {"VOICENOTE_ENGINE__KIND": "s1mini", "VOICENOTE_ENGINE__S1MINI_MAX_NEW_TOKENS": "24",
              "VOICENOTE_ENGINE__S1MINI_ON_MAX_TOKENS": "truncate"}


def _unfold_weight_norm(w: Tensor) -> tuple[Tensor, Tensor]:
    """A weight as weight norm stores it: (g, v) with w = g * v / ||v|| (v only defined up to scale)."""
    g = w.flatten(1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))
    return g, w * 3.0


def published_codec_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A codec state dict (the decoder's, or the encoder's and the decoder's together) in the published
    ``codec.pth`` layout."""
    codec: dict[str, Tensor] = {}
    has_encoder = any(k.startswith("encoder.") for k in state)
    for k, v in state.items():
        if k.startswith(("decoder.", "encoder.")) and k.endswith("conv.weight"):  # CausalWNConv1d: parametrizations
            g, vv = _unfold_weight_norm(v)
            base = k[: -len("weight")]
            codec[base + "parametrizations.weight.original0"] = g
            codec[base + "parametrizations.weight.original1"] = vv
        elif k.endswith(("out_proj.weight", "in_proj.weight")):  # dac's WNConv1d: weight_g / weight_v
            g, vv = _unfold_weight_norm(v)
            codec[k + "_g"], codec[k + "_v"] = g, vv
        else:
            codec[k] = v.detach().clone()
    if not has_encoder:  # a decoder-only state: stand-ins for the encode-side keys the decoder's loader skips
        codec["encoder.block.0.conv.weight_g"] = torch.ones(4, 1, 1)
        codec["quantizer.semantic_quantizer.quantizers.0.in_proj.weight_v"] = torch.ones(4, 32, 1)
    # saved buffers and training-only weights that a real codec.pth carries (ignored by the loader)
    codec["quantizer.semantic_predictor_module.proj.weight"] = torch.ones(4, 4)
    codec["quantizer.post_module.freqs_cis"] = torch.zeros(8, 8, 2)
    codec["quantizer.post_module.causal_mask"] = torch.ones(8, 8, dtype=torch.bool)
    return codec


def _lightning(state: dict[str, Tensor], c: DualARConfig) -> dict[str, Any]:
    """The LightningModule layout: {"state_dict": {"model.<name>": ...}}, with layer 0's q/k/v split."""
    wqkv = state.pop("layers.0.attention.wqkv.weight")
    q, k, v = wqkv.split([c.n_head * c.head_dim, c.n_local_heads * c.head_dim, c.n_local_heads * c.head_dim])
    state.update({"layers.0.attention.wq.weight": q, "layers.0.attention.wk.weight": k, "layers.0.attention.wv.weight": v})
    return {"state_dict": {"model." + name: t for name, t in state.items()}}


def write_checkpoint(path: Path, config: DualARConfig, model_state: Mapping[str, Tensor], codec_state: Mapping[str, Tensor],
                     special_tokens: Mapping[str, int], *, codec_config: CodecConfig | None = None,
                     lightning: bool = False) -> Path:
    """Write a checkpoint directory (created if need be) with these weights and a byte-level tokenizer.

    ``codec_config``: also write ``codec_config.json`` (for a codec of other shapes than the published
    one). ``lightning``: write model.pth in the LightningModule layout, as some exports are.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config.to_dict()))
    state = {k: v.detach().clone() for k, v in model_state.items()}
    torch.save(_lightning(state, config) if lightning else state, path / "model.pth")
    torch.save(published_codec_state(codec_state), path / "codec.pth")
    if codec_config is not None:
        (path / "codec_config.json").write_text(json.dumps(dataclasses.asdict(codec_config)))
    # One BPE rank per byte: the real tokenizer then encodes exactly as the byte tokenizer the weights were made with.
    ranks = "".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256))
    (path / "tokenizer.tiktoken").write_text(ranks)
    (path / "special_tokens.json").write_text(json.dumps(dict(special_tokens)))
    return path


def write_tiny_checkpoint(path: Path, *, seed: int = 7, loudness: float = LOUDNESS) -> Path:
    """A tiny random openaudio-s1-mini directory (about 1 MB) that the worker loads as it is."""
    from .codec import CodecDecoder
    from .codec_encoder import CodecEncoder
    from .model import DualARTransformer

    tok = ByteTokenizer(num_semantic=N_SEMANTIC)
    config = tiny_config(tok.vocab_size, N_SEMANTIC)
    model = DualARTransformer(config, tok.semantic_begin_id, tok.semantic_end_id).init_random(seed)
    codec_config = tiny_codec_config(N_SEMANTIC)
    codec_state = dict(CodecDecoder(codec_config).init_random(seed).state_dict())
    last = max(int(m.group(1)) for k in codec_state if (m := re.match(r"decoder\.model\.(\d+)\.conv\.", k)))
    for name in codec_state:
        if name.startswith(f"decoder.model.{last}.conv."):
            codec_state[name] = codec_state[name] * loudness
    # the encoder too, so the tiny checkpoint encodes reference voices; it shares the decoder's codebooks
    # and out_proj (the same keys), which keep the decoder's values
    for name, t in CodecEncoder(codec_config).init_random(seed + 1).state_dict().items():
        codec_state.setdefault(name, t)
    return write_checkpoint(path, config, model.state_dict(), codec_state, tok.special, codec_config=codec_config)
