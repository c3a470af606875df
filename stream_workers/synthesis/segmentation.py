"""Long inputs become segments of bounded length, cut at sentence boundaries; their audio is joined
back in order without clicks.

Short segments keep a batch's items of similar length, so one long note does not make its batch-mates
wait for (and pad up to) its length.
"""

from __future__ import annotations

import re

import numpy as np

# A sentence ends at . ! ? (or an ellipsis, or CJK stops), optionally followed by closing quotes or
# brackets, then whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:—–])\s+")

GAP_MS = 60.0  # the pause :func:`join_audio` puts between two segments
FADE_MS = 8.0


def split_text(text: str, max_chars: int, first_max_chars: int | None = None) -> list[str]:
    """``text`` as segments of at most ``max_chars`` characters, cut at sentence boundaries.

    Sentences are packed greedily; a sentence longer than ``max_chars`` is cut at clause boundaries,
    then at spaces, and only a single word longer than ``max_chars`` is cut mid-word.

    ``first_max_chars`` bounds the first segment more tightly (a streaming job's first audio is ready
    sooner the shorter it is); the rest is split as usual.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    if first_max_chars is not None and first_max_chars < max_chars:
        # Segments are pieces of the text with its whitespace runs as single spaces, so the first one is a
        # prefix of that text.
        flat = " ".join(text.split())
        first = split_text(flat, first_max_chars)[:1]
        if first and flat.startswith(first[0]):
            return [first[0], *split_text(flat[len(first[0]):], max_chars)]
    text = text.strip()
    if len(text) <= max_chars:
        return [text] if text else []
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        pieces.extend(_fit(sentence.strip(), max_chars))
    return _pack([p for p in pieces if p], max_chars)


def _fit(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    clauses = [c.strip() for c in _CLAUSE_END.split(sentence) if c.strip()]
    if len(clauses) > 1:
        return _pack([part for clause in clauses for part in _fit(clause, max_chars)], max_chars)
    words = sentence.split()
    if len(words) > 1:
        return _pack([part for word in words for part in _fit(word, max_chars)], max_chars)
    return [sentence[i : i + max_chars] for i in range(0, len(sentence), max_chars)]


def _pack(parts: list[str], max_chars: int) -> list[str]:
    """Greedy packing of ``parts`` (each within the bound) joined by single spaces."""
    segments: list[str] = []
    current = ""
    for part in parts:
        if not current:
            current = part
        elif len(current) + 1 + len(part) <= max_chars:
            current = f"{current} {part}"
        else:
            segments.append(current)
            current = part
    if current:
        segments.append(current)
    return segments


def join_audio(parts: list[np.ndarray], sample_rate: int, *, fade_ms: float = FADE_MS, gap_ms: float = GAP_MS) -> np.ndarray:
    """Segments' audio in order, each edge faded to zero and separated by a short pause.

    The fades remove the step a hard cut would leave between two waveforms (heard as a click); the
    pause stands in for the one a speaker makes between sentences.
    """
    if not parts:
        return np.zeros(0, dtype=np.float32)
    if len(parts) == 1:
        return parts[0].astype(np.float32, copy=False)
    return np.concatenate([joined_piece(part, i, len(parts), sample_rate, fade_ms=fade_ms, gap_ms=gap_ms)
                           for i, part in enumerate(parts)])


def joined_piece(part: np.ndarray, index: int, count: int, sample_rate: int, *,
                 fade_ms: float = FADE_MS, gap_ms: float = GAP_MS) -> np.ndarray:
    """What segment ``index`` of ``count`` contributes to :func:`join_audio`: its faded audio, preceded by
    the pause when it is not the first. A stream of these pieces concatenates to exactly the joined audio,
    so a streamed job and its stored file sound the same."""
    if count == 1:
        return part.astype(np.float32, copy=False)
    fade = max(1, int(sample_rate * fade_ms / 1000))
    part = part.astype(np.float32, copy=True)
    n = min(fade, len(part) // 2)
    if n:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        if index > 0:
            part[:n] *= ramp
        if index < count - 1:
            part[-n:] *= ramp[::-1]
    if index == 0:
        return part
    return np.concatenate([np.zeros(int(sample_rate * gap_ms / 1000), dtype=np.float32), part])


def segment_offsets(lengths: list[int], sample_rate: int, *, gap_ms: float = GAP_MS) -> list[int]:
    """Where each segment's own audio starts in :func:`join_audio`'s output, in samples (its ``lengths`` in
    order): after the segments before it and a pause before each but the first. Fades change no length."""
    gap = int(sample_rate * gap_ms / 1000) if len(lengths) > 1 else 0
    offsets, at = [], 0
    for i, n in enumerate(lengths):
        at += gap if i else 0
        offsets.append(at)
        at += n
    return offsets
