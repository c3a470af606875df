"""The encoder half of S1-mini's 44.1 kHz codec (fish-speech's modded DAC), audio -> codes.

audio (B, N) float in [-1, 1], 44.1 kHz mono, right-padded with zeros to a multiple of one code frame
(2,048 samples)
  -> ``encoder``: causal conv 1 -> 64, 4 blocks (3 residual units with dilations 1/3/9, Snake, causal
     strided conv /2 /4 /8 /8 doubling the channels, then a window-limited transformer where
     ``encoder_transformer_layers`` says: 4 layers after the last block), Snake, causal conv -> latent (1024)
  -> ``quantizer.downsample``: 2 x (causal strided conv /2 + ConvNeXt block)   (/4 in time)
  -> ``quantizer.pre_module``: causal window-limited transformer (the post_module's shapes)
  -> ``quantizer.semantic_quantizer``: one codebook (4,096) -> row 0; its quantized vector is taken off
  -> ``quantizer.quantizer``: 9 residual codebooks (1,024 each) -> rows 1..9
Each codebook lookup is dac's factorized one: a 1x1 conv (``in_proj``) to ``codebook_dim``, the nearest
entry by cosine (both sides L2-normalized), then ``out_proj`` of the entry is what the residual loses.

So one code frame is 2,048 samples, the codes come out (B, 10, ceil(N / 2048)), semantic row first,
exactly as fish-speech's ``DAC.encode`` gives them (tests/engine/test_s1mini_codec_encoder.py checks it
against the wheel's modules on random weights). Module names mirror the checkpoint's, so ``codec.pth``'s
encode-side keys load as they are (weight norm folded, checkpoint.py); the codebooks and ``out_proj``
are the same tensors the decoder holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import CheckpointError, load_into, read_codec_state
from .codec import ConvNeXtBlock, ResidualUnit, Snake1d, WindowTransformer, init_random_weights
from .config import CodecConfig

# fish-speech gives an encoder block's transformer dim // 64 heads, whatever head_dim says
_ENCODER_HEAD_WIDTH = 64
# the frame the codec encodes in: a code frame is 2,048 samples, fish-speech pads to 4 hops of the encoder
_FRAMES_PER_PAD = 4


class CausalStridedConv1d(nn.Module):
    """A convolution padded ``kernel - stride`` on the left and, on the right, to whole strides
    (fish-speech's CausalConvNet): ``ceil(T / stride)`` outputs, none of which sees the future."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size, stride=stride, dilation=dilation, groups=groups)
        self.stride = stride
        self.kernel = (kernel_size - 1) * dilation + 1
        self.left = self.kernel - stride

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[-1]
        frames = (n - self.kernel + self.left) / self.stride + 1
        right = (math.ceil(frames) - 1) * self.stride + (self.kernel - self.left) - n
        return self.conv(F.pad(x, (self.left, right)))


def _window_transformer(cfg: CodecConfig, dim: int, n_layer: int) -> WindowTransformer:
    """An encoder block's transformer: ``dim`` wide, dim // 64 heads of encoder_head_dim, window 512."""
    shapes = dataclasses.replace(
        cfg, post_n_layer=n_layer, post_n_head=dim // _ENCODER_HEAD_WIDTH, post_dim=dim,
        post_intermediate_size=dim * 3, post_head_dim=cfg.encoder_head_dim, post_window_size=cfg.encoder_window_size,
    )
    return WindowTransformer(shapes, dim)


class EncoderBlock(nn.Module):
    def __init__(self, cfg: CodecConfig, dim: int, stride: int, n_layer: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            ResidualUnit(dim // 2, 1),
            ResidualUnit(dim // 2, 3),
            ResidualUnit(dim // 2, 9),
            Snake1d(dim // 2),
            CausalStridedConv1d(dim // 2, dim, 2 * stride, stride),
        ]
        if n_layer:
            layers.append(_window_transformer(cfg, dim, n_layer))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Encoder(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        if len(cfg.encoder_transformer_layers) != len(cfg.encoder_rates):
            raise ValueError("encoder_transformer_layers needs one entry per encoder rate")
        d = cfg.encoder_width
        layers: list[nn.Module] = [CausalStridedConv1d(1, d, 7)]
        for stride, n_layer in zip(cfg.encoder_rates, cfg.encoder_transformer_layers, strict=True):
            d *= 2
            if n_layer and d < _ENCODER_HEAD_WIDTH:
                raise ValueError(f"an encoder transformer needs at least {_ENCODER_HEAD_WIDTH} channels, block has {d}")
            layers.append(EncoderBlock(cfg, d, stride, n_layer))
        layers += [Snake1d(d), CausalStridedConv1d(d, cfg.latent_dim, 3)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class VQEncode(nn.Module):
    """One codebook's encode path (names as dac's VectorQuantize: in_proj, codebook, out_proj)."""

    def __init__(self, in_dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.in_proj = nn.Conv1d(in_dim, codebook_dim, 1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)
        self.out_proj = nn.Conv1d(codebook_dim, in_dim, 1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z (B, D, T) -> (quantized (B, D, T), codes (B, T), projected latent (B, codebook_dim, T))."""
        z_e = self.in_proj(z)
        b, d, t = z_e.shape
        enc = F.normalize(z_e.transpose(1, 2).reshape(b * t, d))
        book = F.normalize(self.codebook.weight)
        # dac's expression, term for term, so that near-ties resolve to the same entry
        dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ book.t() + book.pow(2).sum(1, keepdim=True).t()
        codes = (-dist).max(1)[1].view(b, t)
        z_q = self.codebook(codes).transpose(1, 2)
        z_q = z_e + (z_q - z_e)  # dac's straight-through line: the same rounding as the reference
        return self.out_proj(z_q), codes, z_e


class RVQEncode(nn.Module):
    def __init__(self, n: int, in_dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.quantizers = nn.ModuleList(VQEncode(in_dim, codebook_size, codebook_dim) for _ in range(n))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z (B, D, T) -> (sum of the quantized vectors, codes (B, n, T), latents (B, n * codebook_dim, T))."""
        residual = z
        z_q = torch.zeros_like(z)
        codes, latents = [], []
        for q in self.quantizers:
            z_q_i, codes_i, z_e_i = q(residual)
            z_q = z_q + z_q_i
            residual = residual - z_q_i
            codes.append(codes_i)
            latents.append(z_e_i)
        return z_q, torch.stack(codes, 1), torch.cat(latents, 1)


class QuantizerEncode(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        d = cfg.latent_dim
        self.downsample = nn.Sequential(
            *[nn.Sequential(CausalStridedConv1d(d, d, f, f), ConvNeXtBlock(d)) for f in cfg.downsample_factor]
        )
        self.pre_module = WindowTransformer(cfg, d)
        self.semantic_quantizer = RVQEncode(1, d, cfg.semantic_codebook_size, cfg.codebook_dim)
        self.quantizer = RVQEncode(cfg.n_codebooks, d, cfg.codebook_size, cfg.codebook_dim)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """latent (B, D, T * 4) -> (codes (B, 10, T), pre-quantization latent (B, D, T), projected latents)."""
        z = self.pre_module(self.downsample(z))
        sem_z, sem_codes, sem_latents = self.semantic_quantizer(z)
        _, codes, latents = self.quantizer(z - sem_z)
        return torch.cat([sem_codes, codes], 1), z, torch.cat([sem_latents, latents], 1)


class CodecEncoder(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.config = cfg
        if cfg.encoder_width * math.prod(cfg.encoder_rates) * math.prod(cfg.downsample_factor) <= 0:
            raise ValueError("encoder widths and rates must be positive")
        if math.prod(cfg.encoder_rates) * math.prod(cfg.downsample_factor) != cfg.hop_length:
            raise ValueError(
                f"encoder rates {cfg.encoder_rates} x downsample {cfg.downsample_factor} do not make the decoder's "
                f"hop of {cfg.hop_length} samples"
            )
        self.encoder = Encoder(cfg)
        self.quantizer = QuantizerEncode(cfg)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def pad_length(self) -> int:
        """fish-speech pads the audio to a multiple of 4 encoder hops (= one code frame for the real codec)."""
        return math.prod(self.config.encoder_rates) * _FRAMES_PER_PAD

    def init_random(self, seed: int = 0) -> CodecEncoder:
        init_random_weights(self, seed)  # the encoder has no transposed convolutions: the same draws as before
        return self

    @torch.inference_mode()
    def encode(self, audio: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """audio (B, N) float -> (codes (B, 10, T) int64, pre-quantization latent (B, D, T), projected latents).

        The batch is right-padded with zeros to a multiple of :attr:`pad_length`, as fish-speech does;
        every layer is causal, so a row's codes do not depend on what follows it."""
        if audio.dim() != 2:
            raise ValueError(f"audio must be (batch, samples), got shape {tuple(audio.shape)}")
        if not audio.is_floating_point():
            raise ValueError(f"audio must be float samples in [-1, 1], got {audio.dtype}")
        n = audio.shape[-1]
        if n == 0:
            raise ValueError("audio is empty")
        x = F.pad(audio, (0, -(-n // self.pad_length) * self.pad_length - n))[:, None]
        param = next(self.parameters())
        return self.quantizer(self.encoder(x.to(device=param.device, dtype=param.dtype)))

    def forward(self, audio: Tensor) -> Tensor:
        return self.encode(audio)[0]

    def encode_clip(self, samples: np.ndarray) -> np.ndarray:
        """One mono 44.1 kHz clip (N,) float in [-1, 1] -> codes (10, ceil(N / hop_length)) int64."""
        a = np.asarray(samples)
        if a.ndim != 1:
            raise ValueError(f"a clip must be mono (N,), got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("the clip has NaN or infinite samples")
        codes = self.encode(torch.from_numpy(a.astype(np.float32, copy=False))[None])[0][0]
        frames = -(-a.shape[0] // self.hop_length)
        return codes[:, :frames].long().cpu().numpy()


def encoder_state(state: dict[str, Tensor], encoder: CodecEncoder) -> dict[str, Tensor]:
    """The encoder's part of a codec state read with ``encoder=True`` (the decoder's keys left out)."""
    wanted = encoder.state_dict()
    return {k: v for k, v in state.items() if k in wanted}


def load_codec_encoder(path: str | Path, cfg: CodecConfig) -> CodecEncoder:
    """The encoder of ``codec.pth``, strictly: a checkpoint without encoder weights is a CheckpointError."""
    enc = CodecEncoder(cfg)
    state = encoder_state(read_codec_state(path, encoder=True), enc)
    if not any(k.startswith("encoder.") for k in state):
        raise CheckpointError(f"{path} has no codec encoder weights (encoder.*): it cannot encode reference audio")
    load_into(enc, state, "S1-mini codec encoder (codec.pth)")
    return enc.eval()


def checkpoint_fingerprint(path: str | Path) -> str:
    """First 16 hex digits of the sha256 of the codec checkpoint file: names the codes it encodes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class ClipEncoderLoader:
    """The engine's clip encoder, loaded on first use (most workers never encode a voice).

    ``checkpoint`` None: random weights from ``seed`` (the random-init engine of tests and benchmarks),
    fingerprinted by its shapes and seed. Runs in fp32 on ``device``; one clip at a time."""

    def __init__(self, checkpoint: str | Path | None, cfg: CodecConfig, device: str | torch.device = "cpu",
                 seed: int = 0) -> None:
        self.checkpoint = checkpoint
        self.cfg = cfg
        self.device = torch.device(device)
        self.seed = seed
        self._encoder: CodecEncoder | None = None
        self._fingerprint: str | None = None
        self._lock = threading.Lock()

    def fingerprint(self) -> str:
        with self._lock:
            if self._fingerprint is None:
                if self.checkpoint is not None:
                    self._fingerprint = checkpoint_fingerprint(self.checkpoint)
                else:
                    shapes = json.dumps({"random_init": self.seed, **dataclasses.asdict(self.cfg)}, sort_keys=True)
                    self._fingerprint = hashlib.sha256(shapes.encode()).hexdigest()[:16]
            return self._fingerprint

    def encoder(self) -> CodecEncoder:
        with self._lock:
            if self._encoder is None:
                if self.checkpoint is not None:
                    enc = load_codec_encoder(self.checkpoint, self.cfg)
                else:
                    enc = CodecEncoder(self.cfg).init_random(self.seed).eval()
                self._encoder = enc.to(self.device)
            return self._encoder

    def encode(self, samples: np.ndarray) -> np.ndarray:
        return self.encoder().encode_clip(samples)
