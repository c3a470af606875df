"""Registered reference voices.

Layout: ``<voices_dir>/<name>/`` holding ``prompt.txt`` (what the reference audio says, UTF-8) and
``codes.npy`` (int array (10, T): the codec codes of the reference audio, semantic row first; the
codec encoder is not part of this engine, so references are registered as codes). The prompt
tokens built from a voice are cached per worker in an LRU.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..base import UnknownVoice

DEFAULT_VOICE = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class VoiceRegistry:
    def __init__(
        self,
        voices_dir: str | Path | None,
        num_codebooks: int,
        cache_size: int = 32,
        build: Callable[[str, np.ndarray], Any] | None = None,
    ) -> None:
        self.build = build
        self.dir = Path(voices_dir) if voices_dir else None
        self.num_codebooks = num_codebooks
        self.cache_size = max(1, cache_size)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def names(self) -> list[str]:
        found = []
        if self.dir and self.dir.is_dir():
            for p in sorted(self.dir.iterdir()):
                if p.is_dir() and _NAME.match(p.name) and (p / "prompt.txt").exists() and (p / "codes.npy").exists():
                    found.append(p.name)
        return [DEFAULT_VOICE] + [n for n in found if n != DEFAULT_VOICE]

    def get(self, name: str) -> Any:
        """The cached prompt for a registered voice: ``build(text, codes)`` (or (text, codes) without a
        builder), codes (num_codebooks, T) int64. None for the default voice."""
        if name == DEFAULT_VOICE:
            return None
        with self._lock:
            if name in self._cache:
                self._cache.move_to_end(name)
                self.hits += 1
                return self._cache[name]
        text, codes = self._load(name)
        item = self.build(text, codes) if self.build else (text, codes)
        with self._lock:
            self.misses += 1
            self._cache[name] = item
            self._cache.move_to_end(name)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return item

    def _load(self, name: str) -> tuple[str, np.ndarray]:
        if not self.dir or not _NAME.match(name) or not (self.dir / name).is_dir():
            raise UnknownVoice(f"unknown voice {name!r}")
        d = self.dir / name
        try:
            text = (d / "prompt.txt").read_text(encoding="utf-8").strip()
            codes = np.load(d / "codes.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UnknownVoice(f"voice {name!r} is not readable: {e}") from e
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks or not np.issubdtype(codes.dtype, np.integer):
            raise UnknownVoice(
                f"voice {name!r}: codes.npy must be an integer array ({self.num_codebooks}, T), got {codes.shape} {codes.dtype}"
            )
        if codes.size and codes.min() < 0:
            raise UnknownVoice(f"voice {name!r}: negative codes")
        return text, codes.astype(np.int64)
