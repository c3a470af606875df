"""The codec encoder loaded from a checkpoint directory (parity with fish-speech: test_s1mini_parity.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from stream_workers.engine.s1mini import CheckpointError, tiny_checkpoint
from stream_workers.engine.s1mini.checkpoint import check_state, read_codec_state
from stream_workers.engine.s1mini.codec import CodecDecoder
from stream_workers.engine.s1mini.codec_encoder import checkpoint_fingerprint, load_codec_encoder
from stream_workers.engine.s1mini.config import tiny_codec_config


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_checkpoint.write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def test_tiny_checkpoint_encodes(tiny_dir):
    cfg = tiny_codec_config(tiny_checkpoint.N_SEMANTIC)
    enc = load_codec_encoder(tiny_dir / "codec.pth", cfg)
    t = np.arange(44100 * 2 + 300) / 44100
    clip = (0.4 * np.sin(2 * np.pi * 220 * t * (1 + t))).astype(np.float32)  # a chirp: the codes change over time
    codes = enc.encode_clip(clip)
    assert codes.dtype == np.int64 and codes.shape == (10, -(-clip.size // 2048))
    assert 0 <= codes[0].min() and codes[0].max() < cfg.semantic_codebook_size
    assert 0 <= codes[1:].min() and codes[1:].max() < cfg.codebook_size
    assert len(np.unique(codes[0])) > 1 and len(np.unique(codes[1])) > 1
    # deterministic, and a prefix of the clip gives a prefix of the codes (causal)
    assert (enc.encode_clip(clip) == codes).all()
    assert (enc.encode_clip(clip[: 2048 * 10]) == codes[:, :10]).all()
    # the decoder still loads strictly from the same file (the encode-side keys are skipped)
    check_state(CodecDecoder(cfg), read_codec_state(tiny_dir / "codec.pth"), "codec")
    # and the codebooks the encoder picks from are the decoder's
    both = read_codec_state(tiny_dir / "codec.pth", encoder=True)
    name = "quantizer.semantic_quantizer.quantizers.0.codebook.weight"
    assert torch.equal(enc.state_dict()[name], both[name])


def test_decoder_only_checkpoint_cannot_encode(tmp_path):
    cfg = tiny_codec_config(64)
    path = tmp_path / "codec.pth"
    torch.save(tiny_checkpoint.published_codec_state(CodecDecoder(cfg).init_random(1).state_dict()), path)
    with pytest.raises(CheckpointError, match="no codec encoder weights"):
        load_codec_encoder(path, cfg)


def test_encoder_weights_of_other_shapes_are_refused(tiny_dir, tmp_path):
    from dataclasses import replace

    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_codec_encoder(tiny_dir / "codec.pth", replace(tiny_codec_config(64), encoder_dim=4))


def test_fingerprint_is_the_sha256_prefix(tiny_dir):
    data = (tiny_dir / "codec.pth").read_bytes()
    assert checkpoint_fingerprint(tiny_dir / "codec.pth") == hashlib.sha256(data).hexdigest()[:16]
