"""The decoder half of S1-mini's 44.1 kHz codec (fish-speech's modded DAC), codes -> audio.

codes (B, 10, T): row 0 semantic (4,096 entries), rows 1..9 residual (1,024 entries each)
  -> per codebook: embedding (dim 8) -> 1x1 conv to 1,024 channels; summed
  -> ``quantizer.post_module``: causal window-limited transformer (8 layers, window 128 frames)
  -> ``quantizer.upsample``: 2 x (causal transposed conv x2 + ConvNeXt block)   (x4 in time)
  -> ``decoder``: causal conv 1024->1536, 4 blocks (Snake, causal transposed conv x8/x8/x4/x2,
     3 residual units with dilations 1/3/9), Snake, causal conv -> 1 channel, tanh  (x512)
One code frame is 2,048 samples. Every layer is causal, so right-padding a batch with extra frames
does not change the earlier samples: the batch is decoded at once and each row is cropped.

Weight norm is folded into plain weights at load time (checkpoint.py), so these modules hold
``conv.weight``/``conv.bias`` where the checkpoint has ``weight_g``/``weight_v`` (or
``parametrizations.weight.original0/1``). Module names mirror the checkpoint's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import CodecConfig
from .layers import RMSNorm, TransformerBlock, rope_at, rope_rows, rope_table


class Snake1d(nn.Module):
    """x + sin(alpha x)^2 / alpha. ``fp32``: computed in fp32 whatever the input (the bf16-autocast
    codec runs its convolutions in bf16 and Snake in fp32, as fish-speech serves it)."""

    fp32 = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.fp32:
            x = x.float()
        a = self.alpha
        return x + (a + 1e-9).reciprocal() * torch.sin(a * x).pow(2)


class CausalConv1d(nn.Module):
    """Stride-1 convolution padded on the left only."""

    def __init__(self, cin: int, cout: int, kernel_size: int, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size, dilation=dilation, groups=groups)
        self.left = (kernel_size - 1) * dilation

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (self.left, 0)))


class CausalConvTranspose1d(nn.Module):
    """Transposed convolution with the (kernel - stride) overhang trimmed on the right."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, kernel_size, stride=stride)
        self.trim = kernel_size - stride

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y[..., : y.shape[-1] - self.trim] if self.trim else y


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float = 4.0, kernel_size: int = 7) -> None:
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, kernel_size, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, int(mlp_ratio * dim))
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(int(mlp_ratio * dim), dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).transpose(1, 2)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim), CausalConv1d(dim, dim, 7, dilation=dilation), Snake1d(dim), CausalConv1d(dim, dim, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(cin),
            CausalConvTranspose1d(cin, cout, 2 * stride, stride),
            ResidualUnit(cout, 1),
            ResidualUnit(cout, 3),
            ResidualUnit(cout, 9),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Decoder(nn.Module):
    def __init__(self, latent_dim: int, channels: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [CausalConv1d(latent_dim, channels, 7)]
        out = channels
        for i, stride in enumerate(rates):
            layers.append(DecoderBlock(channels // 2**i, channels // 2 ** (i + 1), stride))
            out = channels // 2 ** (i + 1)
        layers += [Snake1d(out), CausalConv1d(out, 1, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class WindowTransformer(nn.Module):
    """Causal transformer whose queries see at most ``window`` frames back (channels-first I/O)."""

    def __init__(self, cfg: CodecConfig, input_dim: int) -> None:
        super().__init__()
        self.window = cfg.post_window_size
        self.head_dim = cfg.post_head_dim
        self.rope_base = cfg.post_rope_base
        self.layers = nn.ModuleList(
            TransformerBlock(
                cfg.post_dim, cfg.post_n_head, cfg.post_n_head, cfg.post_head_dim,
                cfg.post_intermediate_size, cfg.post_norm_eps, layer_scale=True,
            )
            for _ in range(cfg.post_n_layer)
        )
        self.norm = RMSNorm(cfg.post_dim, cfg.post_norm_eps)
        self.input_proj = nn.Linear(input_dim, cfg.post_dim) if input_dim != cfg.post_dim else nn.Identity()
        self.output_proj = nn.Linear(cfg.post_dim, input_dim) if input_dim != cfg.post_dim else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_proj(x.transpose(1, 2))
        b, t, _ = x.shape
        i = torch.arange(t, device=x.device)
        mask = (i.view(1, -1) <= i.view(-1, 1)) & (i.view(1, -1) > i.view(-1, 1) - self.window)
        mask = mask.view(1, 1, t, t)
        rope = rope_at(rope_rows(rope_table(t, self.head_dim, self.rope_base).to(x.device)), slice(0, t))
        for layer in self.layers:
            x = layer(x, rope, mask)
        x = self.output_proj(self.norm(x))
        return x.transpose(1, 2)


class VQDecode(nn.Module):
    """One codebook's decode path (names as dac's VectorQuantize: codebook, out_proj)."""

    def __init__(self, codebook_size: int, codebook_dim: int, out_dim: int) -> None:
        super().__init__()
        self.codebook = nn.Embedding(codebook_size, codebook_dim)
        self.out_proj = nn.Conv1d(codebook_dim, out_dim, 1)

    def forward(self, codes: Tensor) -> Tensor:
        return self.out_proj(self.codebook(codes).transpose(1, 2))


class RVQDecode(nn.Module):
    def __init__(self, n: int, codebook_size: int, codebook_dim: int, out_dim: int) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.quantizers = nn.ModuleList(VQDecode(codebook_size, codebook_dim, out_dim) for _ in range(n))

    def forward(self, codes: Tensor) -> Tensor:
        z: Tensor | float = 0.0
        for i, q in enumerate(self.quantizers):
            z = z + q(codes[:, i])
        assert isinstance(z, Tensor)  # at least one quantizer
        return z


class QuantizerDecode(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        d = cfg.latent_dim
        self.semantic_quantizer = RVQDecode(1, cfg.semantic_codebook_size, cfg.codebook_dim, d)
        self.quantizer = RVQDecode(cfg.n_codebooks, cfg.codebook_size, cfg.codebook_dim, d)
        self.post_module = WindowTransformer(cfg, d)
        self.upsample = nn.Sequential(
            *[
                nn.Sequential(CausalConvTranspose1d(d, d, f, f), ConvNeXtBlock(d))
                for f in reversed(cfg.downsample_factor)
            ]
        )

    def forward(self, codes: Tensor) -> Tensor:
        sem = codes[:, :1].clamp(0, self.semantic_quantizer.codebook_size - 1)
        res = codes[:, 1:].clamp(0, self.quantizer.codebook_size - 1)
        z = self.semantic_quantizer(sem) + self.quantizer(res)
        return self.upsample(self.post_module(z))


def init_random_weights(module: nn.Module, seed: int) -> None:
    """Random weights for tests and benchmarks without a checkpoint (encoder and decoder alike), from ``seed``,
    leaving torch's global generator as it was."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=1.0)
    torch.random.set_rng_state(state)


class CodecDecoder(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.config = cfg
        self.quantizer = QuantizerDecode(cfg)
        self.decoder = Decoder(cfg.latent_dim, cfg.decoder_dim, tuple(cfg.decoder_rates))

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    def init_random(self, seed: int = 0) -> CodecDecoder:
        init_random_weights(self, seed)
        return self

    @torch.inference_mode()
    def forward(self, codes: Tensor) -> Tensor:
        """codes (B, 10, T) int -> audio (B, T * hop_length) in [-1, 1]."""
        return self.decoder(self.quantizer(codes.long())).squeeze(1)

    @torch.inference_mode()
    def decode_rows(self, rows: list[Tensor], max_batch: int = 8, forward=None, pad_to: int = 1) -> list[Tensor]:
        """Decode codes of different lengths ((10, T_b) each): right-pad, decode, crop each row.

        ``pad_to`` rounds the padded length up to a multiple (fewer distinct shapes for a compiled
        ``forward``); the codec is causal, so padding never changes a row's samples."""
        out: list[Tensor] = []
        dev = next(self.parameters()).device
        forward = forward or self.forward
        for s in range(0, len(rows), max_batch):
            chunk = rows[s : s + max_batch]
            t_max = max(int(r.shape[1]) for r in chunk)
            t_max = -(-t_max // pad_to) * pad_to
            codes = torch.zeros((len(chunk), self.config.num_codebooks, t_max), dtype=torch.long)
            for i, r in enumerate(chunk):
                codes[i, :, : r.shape[1]] = r
            audio = forward(codes.to(dev)).float().cpu()
            out.extend(audio[i, : int(r.shape[1]) * self.hop_length] for i, r in enumerate(chunk))
        return out
