"""Loading the openaudio-s1-mini checkpoint directory, strictly.

Layout (as published):
  config.json            dual-AR shapes (model_type "dual_ar")
  model.pth              LLaMA part state dict (torch.save); ``model.safetensors`` also accepted
                         when the optional ``safetensors`` package is installed
  codec.pth              codec state dict (encoder + quantizer + decoder; the engine loads the decode
                         path, and the encode path when it encodes reference voices: codec_encoder.py)
  tokenizer.tiktoken     BPE ranks, special_tokens.json: {token: id}

Every expected parameter must be present with the right shape and no unknown parameter may be left
over; otherwise start-up stops with :class:`CheckpointError` naming the missing, unexpected and
mis-shaped parameters. Keys that the reference itself drops or that belong to the encode path are
ignored explicitly (listed below), never silently by pattern-matching everything.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from ..base import EngineError

# LLaMA part: the reference drops audio-projector weights (``audio_`` in the name).
_LLAMA_IGNORED = re.compile(r"(^|\.)audio_")
# Codec: encode-only modules (kept when the encoder is wanted), the training-only semantic predictor,
# and persistent buffers the reference saves (we recompute them).
_CODEC_ENCODE_ONLY = re.compile(
    r"^(encoder\."
    r"|quantizer\.downsample\."
    r"|quantizer\.pre_module\."
    r"|quantizer\.(semantic_quantizer|quantizer)\.quantizers\.\d+\.in_proj\."
    r")"
)
_CODEC_IGNORED = re.compile(r"^quantizer\.semantic_predictor_module\.|(^|\.)(freqs_cis|causal_mask)$")


class CheckpointError(EngineError):
    code = "checkpoint_error"


def _torch_load(path: Path) -> dict[str, Tensor]:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:
        # mmap needs the zipfile format; fall back for legacy files
        return torch.load(path, map_location="cpu", weights_only=True)


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise CheckpointError(f"{path.name} needs the optional 'safetensors' package") from e
    return load_file(str(path))


def read_llama_state(checkpoint_dir: str | Path) -> dict[str, Tensor]:
    d = Path(checkpoint_dir)
    if (d / "model.pth").exists():
        state = _torch_load(d / "model.pth")
    elif (d / "model.safetensors").exists():
        state = _load_safetensors(d / "model.safetensors")
    else:
        raise CheckpointError(f"no model.pth or model.safetensors in {d}")
    return normalize_llama_state(state)


def normalize_llama_state(state: dict) -> dict[str, Tensor]:
    """Unwrap Lightning checkpoints, strip ``model.``, drop audio keys, fuse split wq/wk/wv."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out: OrderedDict[str, Tensor] = OrderedDict()
    for k, v in state.items():
        if k.startswith("model."):
            k = k[len("model.") :]
        if _LLAMA_IGNORED.search(k):
            continue
        out[k] = v
    for k in [k for k in out if k.endswith(".wq.weight")]:
        p = k[: -len("wq.weight")]
        if p + "wk.weight" in out and p + "wv.weight" in out:
            out[p + "wqkv.weight"] = torch.cat([out.pop(k), out.pop(p + "wk.weight"), out.pop(p + "wv.weight")])
    return out


def fold_weight_norm(g: Tensor, v: Tensor) -> Tensor:
    """w = g * v / ||v|| with the norm over every dim but 0 (torch's weight_norm, dim=0)."""
    dims = tuple(range(1, v.dim()))
    return g * (v / v.float().norm(dim=dims, keepdim=True).to(v.dtype))


def read_codec_state(path: str | Path, *, encoder: bool = False) -> dict[str, Tensor]:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"codec checkpoint {p} not found")
    return normalize_codec_state(_torch_load(p), encoder=encoder)


def normalize_codec_state(state: dict, *, encoder: bool = False) -> dict[str, Tensor]:
    """Unwrap, keep the ``generator.`` part of GAN checkpoints, fold weight norm, drop encode-only keys
    (kept with ``encoder``: then the state holds the encoder's keys and the decoder's, which share the
    codebooks and ``out_proj``)."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if any(k.startswith("generator.") for k in state):
        state = {k[len("generator.") :]: v for k, v in state.items() if k.startswith("generator.")}
    out: OrderedDict[str, Tensor] = OrderedDict()
    pending: dict[str, dict[str, Tensor]] = {}
    for k, v in state.items():
        if _CODEC_IGNORED.search(k) or (not encoder and _CODEC_ENCODE_ONLY.search(k)):
            continue
        for g_name, v_name in (("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1")):
            if k.endswith("." + g_name) or k.endswith("." + v_name):
                base = k.rsplit("." + (g_name if k.endswith("." + g_name) else v_name), 1)[0]
                pending.setdefault(base, {})["g" if k.endswith("." + g_name) else "v"] = v
                break
        else:
            out[k] = v
    for base, gv in pending.items():
        if "g" in gv and "v" in gv:
            out[base + ".weight"] = fold_weight_norm(gv["g"].float(), gv["v"].float())
        else:  # half a weight-norm pair: report it as unexpected
            for part in gv:
                out[f"{base}.weight_{part}"] = gv[part]
    return out


def check_state(module: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """Raise CheckpointError unless ``state`` has exactly ``module``'s parameters, shapes matching."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:

        def fmt(title: str, items: list[str]) -> str:
            if not items:
                return ""
            more = f" ... and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}): " + ", ".join(items[:20]) + more

        raise CheckpointError(
            f"{what} checkpoint does not match the model:"
            + fmt("missing", missing)
            + fmt("unexpected", unexpected)
            + fmt("shape mismatch", shapes)
        )


def load_into(module: nn.Module, state: dict[str, Tensor], what: str) -> None:
    check_state(module, state, what)
    module.load_state_dict(state, strict=True)


def model_state_for_save(module: nn.Module) -> dict[str, Tensor]:
    """State dict in checkpoint layout (for writing test fixtures)."""
    return OrderedDict((k, v.detach().clone()) for k, v in module.state_dict().items())
