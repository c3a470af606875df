"""Configuration of the S1-mini engine: model shapes (LLaMA part and codec) and engine settings.

Model shapes come from the checkpoint's ``config.json`` when a checkpoint is loaded; the constants
below describe the published ``openaudio-s1-mini`` layout so benchmarks can build the real size with
random weights, and a tiny configuration for tests.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def _round_up(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


def filled(value: T | None) -> T:
    """A ``DualARConfig`` field fish-speech declares optional that ``__post_init__`` has filled in."""
    if value is None:
        raise ValueError("DualARConfig field left None: __post_init__ fills in every fast_* field")
    return value


@dataclass
class DualARConfig:
    """Shapes of the dual autoregressive text-to-semantic transformer (fish-speech ``dual_ar``).

    The defaults are fish-speech's own (``BaseModelArgs`` / ``DualARModelArgs`` in
    ``fish_speech/models/text2semantic/llama.py``), and so is ``__post_init__``'s filling-in, so a
    ``config.json`` gives exactly the shapes fish-speech builds from it, including keys the file omits.
    They are NOT the S1-mini shapes: :func:`s1mini_config` sets those explicitly.
    """

    vocab_size: int = 32000
    n_layer: int = 32
    n_head: int = 32
    n_local_heads: int = -1  # -1: n_head (no grouped-query attention)
    dim: int = 4096
    head_dim: int = 64
    intermediate_size: int = None  # type: ignore[assignment]  # None: 2/3 * 4 * dim rounded up to 256
    rope_base: float = 10000
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    tie_word_embeddings: bool = True
    attention_qkv_bias: bool = False
    attention_o_bias: bool = False
    attention_qk_norm: bool = False
    codebook_size: int = 160
    num_codebooks: int = 4
    scale_codebook_embeddings: bool = False
    # fast (codebook) transformer; None: the slow transformer's value
    n_fast_layer: int = 4
    fast_dim: int | None = None
    fast_n_head: int | None = None
    fast_n_local_heads: int | None = None
    fast_head_dim: int | None = None
    fast_intermediate_size: int | None = None
    fast_attention_qkv_bias: bool | None = None
    fast_attention_o_bias: bool | None = None
    fast_attention_qk_norm: bool | None = None
    model_type: str = "dual_ar"

    def __post_init__(self) -> None:
        if self.n_local_heads in (-1, None):
            self.n_local_heads = self.n_head
        if self.intermediate_size is None:
            self.intermediate_size = _round_up(int(2 * 4 * self.dim / 3), 256)
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_head
        self.fast_dim = self.fast_dim or self.dim
        self.fast_n_head = self.fast_n_head or self.n_head
        self.fast_n_local_heads = self.fast_n_local_heads or self.n_local_heads
        self.fast_head_dim = self.fast_head_dim or self.head_dim
        self.fast_intermediate_size = self.fast_intermediate_size or self.intermediate_size
        if self.fast_attention_qkv_bias is None:
            self.fast_attention_qkv_bias = self.attention_qkv_bias
        if self.fast_attention_o_bias is None:
            self.fast_attention_o_bias = self.attention_o_bias
        if self.fast_attention_qk_norm is None:
            self.fast_attention_qk_norm = self.attention_qk_norm
        if self.model_type != "dual_ar":
            raise ValueError(f"unsupported model_type {self.model_type!r} (only 'dual_ar')")
        if self.n_head % self.n_local_heads or self.fast_n_head % self.fast_n_local_heads:
            raise ValueError("n_head must be a multiple of n_local_heads")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DualARConfig:
        """Build from a fish-speech ``config.json``; keys we do not model are ignored, keys it lacks
        take fish-speech's defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> DualARConfig:
        """Read a checkpoint's ``config.json`` and log the effective configuration (one INFO line:
        the file, the keys that took fish-speech's defaults, then the whole config as JSON)."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        cfg = cls.from_dict(data)
        defaulted = sorted(f.name for f in dataclasses.fields(cls) if f.name not in data)
        log.info(
            "S1-mini model config from %s (fish-speech defaults for %s): %s",
            path, ", ".join(defaulted) or "none", json.dumps(cfg.to_dict(), sort_keys=True),
        )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CodecConfig:
    """Shapes of the decoder half of fish-speech's modded DAC (``modded_dac_vq``), 44.1 kHz."""

    sample_rate: int = 44100
    latent_dim: int = 1024  # encoder_dim * 2 ** len(encoder_rates) = 64 * 16
    decoder_dim: int = 1536
    decoder_rates: tuple[int, ...] = (8, 8, 4, 2)
    n_codebooks: int = 9  # residual codebooks
    codebook_size: int = 1024
    codebook_dim: int = 8
    semantic_codebook_size: int = 4096
    downsample_factor: tuple[int, ...] = (2, 2)
    # the causal window-limited transformer after the quantizer (``quantizer.post_module``)
    post_n_layer: int = 8
    post_n_head: int = 16
    post_dim: int = 1024
    post_intermediate_size: int = 3072
    post_head_dim: int = 64
    post_rope_base: float = 10000.0
    post_norm_eps: float = 1e-5
    post_window_size: int = 128
    # the encoder half (codec_encoder.py): ``encoder`` (convolutions, widths encoder_dim * 2 ** i) and the
    # quantizer's ``downsample`` + ``pre_module`` (the post_* shapes); encoder_dim None: latent_dim // 2 ** len(rates)
    encoder_dim: int | None = None
    encoder_rates: tuple[int, ...] = (2, 4, 8, 8)
    # window-limited transformer layers after each encoder block (heads of 64 wide, as fish-speech builds them)
    encoder_transformer_layers: tuple[int, ...] = (0, 0, 0, 4)
    encoder_head_dim: int = 64
    encoder_window_size: int = 512

    @property
    def encoder_width(self) -> int:
        """The first encoder convolution's channels (64 for the real codec)."""
        return self.encoder_dim if self.encoder_dim is not None else self.latent_dim // 2 ** len(self.encoder_rates)

    @property
    def hop_length(self) -> int:
        """Audio samples per code frame (2,048 for the real codec)."""
        n = 1
        for r in self.decoder_rates:
            n *= r
        for f in self.downsample_factor:
            n *= f
        return n

    @property
    def num_codebooks(self) -> int:
        return 1 + self.n_codebooks


def s1mini_config() -> DualARConfig:
    """The published openaudio-s1-mini ``config.json`` shapes (a loaded checkpoint's file wins).

    Every field is set here: the dataclass defaults are fish-speech's generic ones, not S1-mini's.
    """
    return DualARConfig(
        vocab_size=155776,
        n_layer=28,
        n_head=16,
        n_local_heads=8,
        dim=1024,
        head_dim=128,
        intermediate_size=3072,
        rope_base=1_000_000.0,
        norm_eps=1e-6,
        max_seq_len=8192,
        tie_word_embeddings=True,
        attention_qkv_bias=False,
        attention_o_bias=False,
        attention_qk_norm=True,
        codebook_size=4096,
        num_codebooks=10,
        scale_codebook_embeddings=True,
        n_fast_layer=4,
        fast_dim=1024,
        fast_n_head=16,
        fast_n_local_heads=8,
        fast_head_dim=64,
        fast_intermediate_size=3072,
        fast_attention_qkv_bias=False,
        fast_attention_o_bias=False,
        fast_attention_qk_norm=False,
    )


def s1mini_codec_config() -> CodecConfig:
    return CodecConfig()


def tiny_config(vocab_size: int, codebook_size: int = 64) -> DualARConfig:
    """A tiny model for tests: same structure, small shapes."""
    return DualARConfig(
        vocab_size=vocab_size,
        n_layer=2,
        n_head=4,
        n_local_heads=2,
        dim=64,
        head_dim=16,
        intermediate_size=128,
        rope_base=1_000_000.0,
        norm_eps=1e-6,
        max_seq_len=512,
        tie_word_embeddings=True,
        attention_qkv_bias=False,
        attention_o_bias=False,
        attention_qk_norm=True,
        codebook_size=codebook_size,
        num_codebooks=10,
        scale_codebook_embeddings=True,
        n_fast_layer=2,
        fast_dim=48,  # != dim, so fast_project_in is a real Linear as in checkpoints with fast_dim != dim
        fast_n_head=4,
        fast_n_local_heads=2,
        fast_head_dim=12,
        fast_intermediate_size=96,
        fast_attention_qkv_bias=False,
        fast_attention_o_bias=False,
        fast_attention_qk_norm=False,
    )


def tiny_codec_config(semantic_codebook_size: int = 64) -> CodecConfig:
    return CodecConfig(
        latent_dim=32,
        decoder_dim=32,
        decoder_rates=(8, 8, 4, 2),
        n_codebooks=9,
        codebook_size=32,
        codebook_dim=4,
        semantic_codebook_size=semantic_codebook_size,
        post_n_layer=2,
        post_n_head=2,
        post_dim=32,
        post_intermediate_size=64,
        post_head_dim=16,
        post_window_size=8,
        encoder_transformer_layers=(0, 0, 0, 0),  # 32 channels: narrower than one 64-wide head
    )


@dataclass
class S1MiniSettings:
    """Engine settings (the lead wires these from environment settings).

    checkpoint_dir: the ``openaudio-s1-mini`` directory (config.json, model.pth or model.safetensors,
        codec.pth, tokenizer.tiktoken, special_tokens.json). Required unless ``random_init``.
    random_init: build the model with random weights instead of loading (benchmarks and tests only);
        ``model_config``/``codec_config`` then give the shapes (default: the real S1-mini shapes).
    """

    checkpoint_dir: str | None = None
    device: str = "cpu"
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU; or float32/bfloat16/float16
    max_new_tokens: int = 1024  # per item; ~47.6 s of audio at 21.5 frames/s
    on_max_tokens: str = "error"  # "error": item fails with max_tokens_exceeded; "truncate": keep audio
    temperature: float = 0.8
    top_p: float = 0.8
    repetition_penalty: float = 1.1
    repetition_window: int = 16
    voices_dir: str | None = None
    voice_cache_size: int = 32  # voices from voices_dir; registered (vc_) voices from the store: as many again
    voice_ttl_s: float = 60.0  # a registered voice is re-checked in the store after this (a deleted one stops)
    compile: bool | None = None  # torch.compile(fullgraph=True) the decode step before graph capture; None: on CUDA only
    compile_backend: str = "inductor"
    compile_cache_dir: str | None = None  # inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR): a restarted pod compiles nothing
    admit_group: int = 8  # while rows decode, queued rows join in groups of this many (or all free slots)...
    admit_wait_ms: float = 30.0  # ... or whatever waits once the oldest has waited this long (an idle engine admits at once)
    codec_batch_size: int = 8  # finished rows decoded by the codec at once
    slots: int | None = None  # rows decoding at once (batch buckets 1, 2, 4 .. slots); None: 64 on CUDA, 8 on CPU
    kv_capacity: int = 2048  # KV columns per slot (prompt + frames); capped at the model's max_seq_len
    prefill_tokens: int = 8192  # padded prompt tokens per batched prefill
    cuda_graphs: bool = True  # on CUDA, capture the decode step per (batch bucket, KV bucket) at start
    codec_dtype: str = "float32"  # float32, bfloat16, or bf16-autocast (Snake in fp32); docs/s1mini.md: error vs fp32
    codec_compile: bool = False  # torch.compile the codec on padded length buckets (CUDA)
    codec_process: str = "auto"  # auto: a child process on the CPU, a thread with its own stream on CUDA; thread; process
    codec_threads: int | None = None  # torch threads of a codec process (None: torch's default)
    random_init: bool = False
    seed: int = 0  # for random_init weights
    model_config: DualARConfig | None = None
    codec_config: CodecConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.on_max_tokens not in ("error", "truncate"):
            raise ValueError("on_max_tokens must be 'error' or 'truncate'")
        if self.checkpoint_dir is None and not self.random_init:
            raise ValueError("S1MiniSettings needs checkpoint_dir (or random_init=True for tests)")
