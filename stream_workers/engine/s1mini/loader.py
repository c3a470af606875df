"""Loading S1-mini: checkpoint, config and tokenizer in, a :class:`LoadedModel` out.

Two ways to a model, one result:
  * :func:`_from_checkpoint`: a local openaudio-s1-mini directory (``config.json``, ``model.pth``,
    ``codec.pth``, the tokenizer); the codec weights are checked against the codec's shapes here,
    with the model's errors, though the codec may be built later in its own process;
  * :func:`_random_init`: random weights (``settings.random_init``: tests and benchmarks).
Both are checked the same way (the tokenizer fits the model) and placed on the device in the dtype.
The engine (engine.py) only runs what this returns.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..base import EngineError
from .checkpoint import CheckpointError, check_state, load_into, read_codec_state, read_llama_state
from .codec import CodecDecoder
from .config import CodecConfig, DualARConfig, S1MiniSettings, s1mini_codec_config, s1mini_config
from .model import DualARTransformer
from .tokenizer import ByteTokenizer, load_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16")
    return _DTYPES[name]


@dataclass
class LoadedModel:
    """A model ready to run: on its device, in its dtype, in eval mode, with its tokenizer and codec shapes."""

    model: DualARTransformer
    config: DualARConfig
    tokenizer: Any  # ByteTokenizer or the checkpoint's tokenizer (tokenizer.py)
    codec_config: CodecConfig
    codec_checkpoint: str | None  # codec.pth; None: random codec weights
    model_version: str
    device: torch.device
    dtype: torch.dtype
    load_s: float


def load_model(settings: S1MiniSettings, tokenizer: Any = None) -> LoadedModel:
    """The model ``settings`` name (a checkpoint directory, or random weights), checked and placed."""
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineError("S1-mini: device is cuda but CUDA is not available", code="engine_unavailable")
    dtype = resolve_dtype(settings.dtype, device)
    t0 = time.perf_counter()
    load = _random_init if settings.random_init else _from_checkpoint
    model, cfg, tok, codec_checkpoint, version = load(settings, tokenizer)
    if tok.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"tokenizer has {tok.vocab_size} ids but the model's vocab_size is {cfg.vocab_size}")
    if tok.num_semantic > cfg.codebook_size:
        raise CheckpointError(f"tokenizer has {tok.num_semantic} semantic tokens, model codebook_size {cfg.codebook_size}")
    model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, cfg, tok, settings.codec_config or s1mini_codec_config(), codec_checkpoint, version,
                       device, dtype, time.perf_counter() - t0)


_Loaded = tuple[DualARTransformer, DualARConfig, Any, "str | None", str]


def _random_init(settings: S1MiniSettings, tokenizer: Any) -> _Loaded:
    cfg = settings.model_config or s1mini_config()
    tok = tokenizer or ByteTokenizer(num_semantic=cfg.codebook_size)
    if tok.vocab_size > cfg.vocab_size:
        cfg = replace(cfg, vocab_size=tok.vocab_size)
    model = DualARTransformer(cfg, tok.semantic_begin_id, tok.semantic_end_id)
    model.init_random(settings.seed)
    return model, cfg, tok, None, f"s1mini-random-init-{settings.seed}"


def _from_checkpoint(settings: S1MiniSettings, tokenizer: Any) -> _Loaded:
    if settings.checkpoint_dir is None:
        raise CheckpointError("S1-mini needs a checkpoint directory (or random_init)")
    d = Path(settings.checkpoint_dir)
    if not d.is_dir():
        raise CheckpointError(f"S1-mini checkpoint directory {d} does not exist")
    if not (d / "config.json").exists():
        raise CheckpointError(f"S1-mini checkpoint {d} has no config.json")
    cfg = settings.model_config or DualARConfig.from_json(d / "config.json")
    try:
        tok = tokenizer or load_tokenizer(d)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise CheckpointError(f"S1-mini tokenizer: {e}") from e
    model = DualARTransformer(cfg, tok.semantic_begin_id, tok.semantic_end_id)
    load_into(model, read_llama_state(d), "S1-mini model (model.pth)")
    codec_checkpoint = str(d / "codec.pth")
    with torch.device("meta"):  # checked here, with the model's errors, though the codec may run in its own process
        probe = CodecDecoder(settings.codec_config or s1mini_codec_config())
    check_state(probe, read_codec_state(codec_checkpoint), "S1-mini codec (codec.pth)")
    version = "openaudio-s1-mini-" + hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return model, cfg, tok, codec_checkpoint, version
