"""OpenAudio S1-mini engine: a batched torch implementation of fish-speech's dual-AR model and codec.

Select with settings ``engine=s1mini``; see docs/s1mini.md.
"""

from .checkpoint import CheckpointError
from .config import CodecConfig, DualARConfig, S1MiniSettings, s1mini_codec_config, s1mini_config, tiny_codec_config, tiny_config
from .engine import S1MiniEngine

__all__ = [
    "CheckpointError",
    "CodecConfig",
    "DualARConfig",
    "S1MiniEngine",
    "S1MiniSettings",
    "s1mini_codec_config",
    "s1mini_config",
    "tiny_codec_config",
    "tiny_config",
]
