"""The S1-mini BPE tokenizer splits and encodes text exactly as fish-speech's own tokenizer does.

The reference is ``fish_speech/tokenizer.py`` from the ``fish-speech`` wheel (installed with
``--no-deps``; it needs only ``tiktoken``). Both tokenizers load the same small BPE vocabulary written
to a temporary checkpoint directory (``tokenizer.tiktoken`` + ``special_tokens.json``), so any
difference in ids comes from the pre-tokenisation split pattern or the special-token handling.
"""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path

import pytest

from stream_workers.engine.s1mini.tokenizer import BASE_SPECIAL_TOKENS, SPLIT_PATTERN, load_tokenizer, semantic_token

pytest.importorskip("tiktoken")
if importlib.util.find_spec("fish_speech") is None:
    pytest.skip("fish-speech reference not installed", allow_module_level=True)

from fish_speech.tokenizer import FISH_TIKTOKEN_PATTERN, FishTokenizer  # noqa: E402

TEXTS = [
    "Hello  world",
    "a\t\tb\n\n c",
    "Price: $1,234.56 — 50%!",
    "  leading and trailing   ",
    "don't stop",
    "数字123和标点，。！",
    "x   ?!y and  ?! z",  # the escaped "\?" alternative of the pattern: whitespace + literal "?!"
    "line one\r\nline two\n\n\n  indented",
    "It's 3.14159, they'll SAY   'no'...",
    "nbsp\u00a0\u00a0here \t\n\t end",
    "<|im_start|>user\nHi  there<|im_end|>",  # special tokens are kept whole by both
]

# Byte-level BPE merges, each the concatenation of two earlier tokens (ranks follow the 256 bytes).
MERGES = [
    b"  ", b"   ", b"\t\t", b"\n\n", b"He", b"ll", b"Hell", b"Hello", b" w", b"or", b" wor", b"ld",
    b" world", b"wor", b"world", b"12", b"123", b"in", b"ing", b"'t", b"on", b"don", b"st", b"op",
    b" st", b" stop", b" a", b"an", b" an", b" and", b" t", b"ra", b"il", b" tra", b"il", b"ing",
    b" trail", b" trailing", b"le", b"ad", b"lead", b" lead", b" leading", b"?!", b" ?!",
]


def _write_vocab(d: Path) -> Path:
    ranks: dict[bytes, int] = {bytes([i]): i for i in range(256)}
    for tok in MERGES:
        if tok in ranks:
            continue
        assert any(tok[:k] in ranks and tok[k:] in ranks for k in range(1, len(tok))), tok
        ranks[tok] = len(ranks)
    d.mkdir(parents=True, exist_ok=True)
    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in ranks.items()]
    (d / "tokenizer.tiktoken").write_text("\n".join(lines) + "\n", encoding="utf-8")
    names = BASE_SPECIAL_TOKENS + [semantic_token(i) for i in range(8)]
    special = {t: len(ranks) + i for i, t in enumerate(names)}
    (d / "special_tokens.json").write_text(json.dumps(special), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> Path:
    return _write_vocab(tmp_path_factory.mktemp("tok"))


def test_split_pattern_is_fish_speech_pattern_character_for_character() -> None:
    assert SPLIT_PATTERN == FISH_TIKTOKEN_PATTERN


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_fish_speech_tokenizer(vocab_dir: Path, text: str) -> None:
    ours = load_tokenizer(vocab_dir)
    ref = FishTokenizer.from_pretrained(str(vocab_dir))
    assert ours.encode(text) == ref.encode(text)


def test_whitespace_runs_stay_one_piece(vocab_dir: Path) -> None:
    """fish-speech's pattern keeps "  " whole before a word (a GPT-4o lookahead would give " ", " world")."""
    tok = load_tokenizer(vocab_dir)
    pieces = [tok._enc.decode_single_token_bytes(i) for i in tok.encode("Hello  world")]
    assert pieces == [b"Hello", b"  ", b"world"]
    pieces = [tok._enc.decode_single_token_bytes(i) for i in tok.encode("a\t\tb")]
    assert pieces == [b"a", b"\t\t", b"b"]


def test_special_token_ids_match_fish_speech(vocab_dir: Path) -> None:
    ours = load_tokenizer(vocab_dir)
    ref = FishTokenizer.from_pretrained(str(vocab_dir))
    assert ours.special == ref.all_special_tokens_with_ids
    assert (ours.semantic_begin_id, ours.semantic_end_id) == (ref.semantic_begin_id, ref.semantic_end_id)
    assert ours.im_end_id == ref.get_token_id("<|im_end|>")
