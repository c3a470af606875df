"""Tokenizers for S1-mini prompts.

* :class:`BPETokenizer`: the real one. The openaudio-s1-mini directory ships ``tokenizer.tiktoken``
  (one ``base64(token) rank`` per line) and ``special_tokens.json`` ({token: id}); encoding needs the
  optional ``tiktoken`` package.
* :class:`ByteTokenizer`: a deterministic byte-level fallback for tests and benchmarks with random
  weights (ids 0..255 are UTF-8 bytes, special tokens follow). It is NOT compatible with real weights;
  the engine only uses it when ``random_init`` is set or a test asks for it.

Both expose the same small surface: ``encode``, ``token_id``, ``vocab_size``, ``semantic_begin_id``,
``semantic_end_id``, ``im_end_id``.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

IM_END = "<|im_end|>"
INTERLEAVE = "<|interleave|>"

# The order of fish-speech's special tokens (ids are assigned in this order after the BPE ranks).
BASE_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|pad|>",
    "<|im_start|>",
    IM_END,
    "<|phoneme_start|>",
    "<|phoneme_end|>",
    "<|tool_call_start|>",
    "<|tool_call_end|>",
    "<|text|>",
    "<|voice|>",
    INTERLEAVE,
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio|>",
]

# Pre-tokenisation split, as tiktoken ``pat_str``: fish-speech's ``FISH_TIKTOKEN_PATTERN``
# (fish_speech/tokenizer.py) character for character, because the checkpoint was trained with it.
# Note its seventh alternative is ``\s+(\?!\S)`` with an ESCAPED ``?``: not GPT-4o's lookahead
# ``\s+(?!\S)`` but whitespace followed by a literal "?!" and one non-space character. So a run of
# whitespace is one piece ("Hello  world" -> "Hello", "  ", "world"), not "Hello", " ", " world" as with
# the lookahead. Do not "fix" it: tests/engine/test_s1mini_tokenizer.py compares against fish-speech.
SPLIT_PATTERN = "|".join(
    [
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
        r"\p{P}",
        r"[^\r\n\p{L}\p{N}]?\p{L}+",
        r"\p{N}",
        r" ?[^\s\p{L}\p{N}]+[\r\n]*",
        r"\s*[\r\n]+",
        r"\s+(\?!\S)",
        r"\s+",
    ]
)

_SEMANTIC_RE = re.compile(r"<\|semantic:(\d+)\|>")


def semantic_token(i: int) -> str:
    return f"<|semantic:{i}|>"


class _SpecialMixin:
    special: dict[str, int]

    def _init_special(self) -> None:
        sem = {int(m.group(1)): i for t, i in self.special.items() if (m := _SEMANTIC_RE.fullmatch(t))}
        if not sem or IM_END not in self.special:
            raise ValueError("special tokens need <|im_end|> and <|semantic:N|> tokens")
        self.semantic_begin_id = sem[0]
        self.semantic_end_id = sem[max(sem)]
        if self.semantic_end_id - self.semantic_begin_id != max(sem):
            raise ValueError("semantic token ids must be contiguous")
        self.num_semantic = max(sem) + 1
        self.im_end_id = self.special[IM_END]

    def token_id(self, token: str) -> int:
        return self.special[token]


class ByteTokenizer(_SpecialMixin):
    """Deterministic fallback: UTF-8 bytes (ids 0..255), then special tokens, then semantic tokens."""

    name = "byte-fallback"

    def __init__(self, num_semantic: int = 4096, extra_special: list[str] | None = None) -> None:
        names = BASE_SPECIAL_TOKENS + (extra_special or ["<|speaker:0|>"])
        names += [semantic_token(i) for i in range(num_semantic)]
        self.special = {t: 256 + i for i, t in enumerate(names)}
        self.vocab_size = 256 + len(names)
        self._init_special()
        self._split = re.compile("(" + "|".join(re.escape(t) for t in names if not _SEMANTIC_RE.fullmatch(t)) + ")")

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for piece in self._split.split(text):
            if not piece:
                continue
            if piece in self.special:
                out.append(self.special[piece])
            else:
                out.extend(piece.encode("utf-8"))
        return out


class BPETokenizer(_SpecialMixin):
    """The checkpoint's tiktoken-style BPE (needs the optional ``tiktoken`` package)."""

    name = "tiktoken"

    def __init__(self, tiktoken_file: str | Path, special_tokens: dict[str, int]) -> None:
        try:
            import tiktoken
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the S1-mini BPE tokenizer needs the 'tiktoken' package (pip install tiktoken)"
            ) from e
        ranks: dict[bytes, int] = {}
        for line in Path(tiktoken_file).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            tok, rank = line.split()
            if tok == "=":  # fish-speech writes the empty token as "="
                continue
            ranks[base64.b64decode(tok)] = int(rank)
        self.special = dict(special_tokens)
        self._init_special()
        self._enc = tiktoken.Encoding(
            name=Path(tiktoken_file).stem, pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
            special_tokens=self.special,
        )
        self.vocab_size = max(max(ranks.values(), default=-1), max(self.special.values())) + 1

    def encode(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special=set(self.special), disallowed_special=())


def load_tokenizer(checkpoint_dir: str | Path) -> BPETokenizer:
    """Load ``tokenizer.tiktoken`` + ``special_tokens.json`` from a checkpoint directory."""
    d = Path(checkpoint_dir)
    tk, sp = d / "tokenizer.tiktoken", d / "special_tokens.json"
    missing = [p.name for p in (tk, sp) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"tokenizer files missing in {d}: {', '.join(missing)}")
    with open(sp, encoding="utf-8") as f:
        special = json.load(f)
    if isinstance(special, list):  # a plain list: ids follow the BPE ranks in order
        n = sum(1 for line in tk.read_text(encoding="utf-8").splitlines() if line.strip())
        special = {t: n + i for i, t in enumerate(special)}
    return BPETokenizer(tk, special)
