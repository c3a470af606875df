"""Shared fixtures for the S1-mini tests: a tiny configuration with random weights."""

from __future__ import annotations

import pytest
import torch

from stream_workers.engine.s1mini import S1MiniEngine, S1MiniSettings, tiny_codec_config, tiny_config
from stream_workers.engine.s1mini.codec import CodecDecoder
from stream_workers.engine.s1mini.model import DualARTransformer
from stream_workers.engine.s1mini.tokenizer import ByteTokenizer

N_SEM = 64


@pytest.fixture(scope="session")
def s1_tok():
    return ByteTokenizer(num_semantic=N_SEM)


@pytest.fixture(scope="session")
def s1_cfg(s1_tok):
    return tiny_config(s1_tok.vocab_size, N_SEM)


@pytest.fixture(scope="session")
def s1_model(s1_tok, s1_cfg):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return DualARTransformer(s1_cfg, s1_tok.semantic_begin_id, s1_tok.semantic_end_id).init_random(7).eval()


@pytest.fixture(scope="session")
def s1_codec():
    return CodecDecoder(tiny_codec_config(N_SEM)).init_random(7).eval()


@pytest.fixture
def make_engine(s1_tok, s1_cfg):
    engines: list[S1MiniEngine] = []

    def make(**kw) -> S1MiniEngine:
        kw.setdefault("max_new_tokens", 8)
        kw.setdefault("on_max_tokens", "truncate")
        # the codec in the engine's thread: spawning a codec process costs seconds per engine here;
        # test_s1mini_codec_runner.py covers the process mode (the CPU default)
        kw.setdefault("codec_process", "thread")
        settings = S1MiniSettings(
            random_init=True, seed=7, model_config=s1_cfg, codec_config=tiny_codec_config(N_SEM), **kw
        )
        engines.append(S1MiniEngine(settings, tokenizer=s1_tok))
        return engines[-1]

    yield make
    for e in engines:
        e.close()
