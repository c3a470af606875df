"""The S1-mini model config: a ``config.json`` gives what fish-speech builds from it, and is logged.

The reference is fish-speech's ``DualARModelArgs`` (``fish_speech/models/text2semantic/llama.py`` in the
``fish-speech`` wheel, installed with ``--no-deps``). llama.py imports ``transformers`` (tokenizer loading)
and its lora module ``loralib`` at import time; where they are not installed they are replaced by empty
stand-ins only while the module is imported. The S1-mini / tiny shape tests need no reference.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from stream_workers.engine.s1mini.config import DualARConfig, s1mini_config, tiny_config

OURS = [f.name for f in dataclasses.fields(DualARConfig)]
# The keys the issue found falling back to our S1 values instead of fish-speech's defaults.
ISSUE_KEYS = ("scale_codebook_embeddings", "rope_base", "norm_eps")


def _installed(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@pytest.fixture(scope="module")
def ref_args() -> Any:
    """fish-speech's ``DualARModelArgs`` class, imported from the wheel."""
    for dep in ("fish_speech", "torch", "einops", "loguru"):
        if not _installed(dep):
            pytest.skip(f"fish-speech reference needs {dep}")
    with pytest.MonkeyPatch.context() as mp:
        if not _installed("transformers"):
            mp.setitem(sys.modules, "transformers", types.ModuleType("transformers"))
            sys.modules["transformers"].AutoTokenizer = None  # type: ignore[attr-defined]
        if not _installed("loralib"):
            mp.setitem(sys.modules, "loralib", types.ModuleType("loralib"))
        llama = importlib.import_module("fish_speech.models.text2semantic.llama")
    return llama.DualARModelArgs


def _theirs(ref_args: Any, data: dict[str, Any]) -> dict[str, Any]:
    """What fish-speech builds from ``data`` (its ``BaseModelArgs.from_pretrained``: ``cls(**data)``),
    restricted to the fields we model."""
    built = dataclasses.asdict(ref_args(**data))
    return {k: built[k] for k in OURS}


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    p = tmp_path / "config.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    return p


def _s1_json(*drop: str) -> dict[str, Any]:
    """An openaudio-s1-mini style config.json (with fish-speech's extra keys), minus ``drop``."""
    d = s1mini_config().to_dict()
    d.update(dropout=0.0, use_gradient_checkpointing=True, initializer_range=0.02, is_reward_model=False)
    for k in drop:
        del d[k]
    return d


def test_every_field_and_default_is_fish_speechs(ref_args) -> None:
    theirs = {f.name: f for f in dataclasses.fields(ref_args)}
    assert set(OURS) <= set(theirs), set(OURS) - set(theirs)
    for f in dataclasses.fields(DualARConfig):
        assert f.default == theirs[f.name].default, f.name
    # and after __post_init__'s filling-in
    assert DualARConfig().to_dict() == {k: dataclasses.asdict(ref_args())[k] for k in OURS}


def test_config_json_missing_the_issue_keys_takes_fish_speech_defaults(tmp_path, ref_args) -> None:
    data = _s1_json(*ISSUE_KEYS)
    cfg = DualARConfig.from_json(_write(tmp_path, data))
    assert cfg.to_dict() == _theirs(ref_args, data)
    defaults = {f.name: f.default for f in dataclasses.fields(ref_args)}
    assert {k: getattr(cfg, k) for k in ISSUE_KEYS} == {k: defaults[k] for k in ISSUE_KEYS}
    # fish-speech's values (not S1-mini's 1e6 / 1e-6 / True)
    assert (cfg.scale_codebook_embeddings, cfg.rope_base, cfg.norm_eps) == (False, 10000, 1e-5)
    # everything the file does give is kept
    assert (cfg.dim, cfg.n_layer, cfg.codebook_size, cfg.attention_qk_norm) == (1024, 28, 4096, True)


@pytest.mark.parametrize(
    "data",
    [
        {"model_type": "dual_ar"},
        {"model_type": "dual_ar", "dim": 512, "n_head": 8, "n_layer": 3, "vocab_size": 1000},
        {"model_type": "dual_ar", "dim": 256, "n_head": 8, "n_local_heads": 2, "head_dim": None,
         "intermediate_size": None, "attention_qkv_bias": True, "attention_qk_norm": True, "fast_dim": 128,
         "fast_n_head": 4},
        _s1_json(),
    ],
    ids=["only-model-type", "sparse", "derived-fields", "s1mini-full"],
)
def test_config_json_gives_what_fish_speech_builds(tmp_path, ref_args, data) -> None:
    assert DualARConfig.from_json(_write(tmp_path, data)).to_dict() == _theirs(ref_args, data)


def test_full_s1mini_json_round_trips_to_s1mini_config(tmp_path) -> None:
    assert DualARConfig.from_json(_write(tmp_path, _s1_json())) == s1mini_config()


def test_effective_config_is_logged_once_at_load(tmp_path, caplog) -> None:
    path = _write(tmp_path, _s1_json(*ISSUE_KEYS))
    with caplog.at_level(logging.INFO, logger="stream_workers.engine.s1mini.config"):
        cfg = DualARConfig.from_json(path)
    records = [r for r in caplog.records if r.name == "stream_workers.engine.s1mini.config"]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    msg = records[0].getMessage()
    head, body = msg[: msg.index("{")], msg[msg.index("{") :]
    assert str(path) in head
    for k in ISSUE_KEYS:  # the keys that took fish-speech's defaults are named
        assert k in head
    logged = json.loads(body)
    assert logged == cfg.to_dict()
    assert "\n" not in msg


def test_s1mini_and_tiny_shapes_do_not_depend_on_the_defaults() -> None:
    """The dataclass defaults are fish-speech's generic ones; S1-mini's values are set explicitly."""
    c = s1mini_config()
    assert (c.vocab_size, c.n_layer, c.n_head, c.n_local_heads, c.dim, c.head_dim, c.intermediate_size) == (
        155776, 28, 16, 8, 1024, 128, 3072)
    assert (c.rope_base, c.norm_eps, c.scale_codebook_embeddings, c.attention_qk_norm, c.max_seq_len) == (
        1_000_000.0, 1e-6, True, True, 8192)
    assert (c.codebook_size, c.num_codebooks, c.n_fast_layer, c.fast_dim, c.fast_n_head, c.fast_n_local_heads,
            c.fast_head_dim, c.fast_intermediate_size, c.fast_attention_qk_norm) == (
        4096, 10, 4, 1024, 16, 8, 64, 3072, False)
    t = tiny_config(300, 64)
    assert (t.rope_base, t.norm_eps, t.scale_codebook_embeddings, t.attention_qk_norm) == (1_000_000.0, 1e-6, True, True)
    assert (t.dim, t.fast_dim, t.head_dim, t.fast_head_dim, t.intermediate_size, t.fast_intermediate_size) == (
        64, 48, 16, 12, 128, 96)
