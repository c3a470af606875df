"""Piper's phoneme durations mapped back to the words of the text.

Piper phonemizes a whole text with espeak-ng, one phoneme list per sentence, and its model says how many
audio samples each phoneme lasts. Which phonemes belong to which word is not given: espeak rewrites
(``$1,234`` is six spoken words, ``3/4`` three), merges (``test... Okay?`` comes out as one run) and
changes a word by its context (``a`` is ``ɐ`` in a sentence, ``eɪ`` alone). So each whitespace-separated
word is phonemized alone, the words' phonemes are laid end to end, and that string is aligned with the
phonemes actually spoken (``difflib``; stress marks, pauses and punctuation left out of both). A word's
time runs from the start of its first aligned phoneme to the end of its last one.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from voicenote.captions import WordTime

_STRESS = frozenset("ˈˌ")


def _sounded(phoneme: str) -> bool:
    """Whether a phoneme is a sound to align (not a stress mark, a space, a pause or punctuation)."""
    return bool(phoneme) and phoneme not in _STRESS and unicodedata.category(phoneme[0])[0] not in "PZSC"


@dataclass(frozen=True, slots=True)
class TimedPhoneme:
    """One phoneme of the spoken text: its symbol and its span of audio, in samples from the text's start."""

    phoneme: str
    start: int
    end: int


def word_times(words: Sequence[str], word_phonemes: Sequence[Sequence[str]], spoken: Sequence[TimedPhoneme],
               sample_rate: int) -> list[WordTime]:
    """The time span of each word that has sounds, in order (words with none, such as a lone dash, are left out).

    ``word_phonemes[i]`` is what ``words[i]`` is alone; ``spoken`` is what was said, timed. Spans never go
    back in time and never overlap: a word the alignment cannot place gets the instant where it falls.
    """
    sounds = [p for p in spoken if _sounded(p.phoneme)]
    said = [p.phoneme for p in sounds]
    mine: list[str] = []
    bounds: list[tuple[int, int]] = []  # per word: [start, end) in ``mine``
    for phonemes in word_phonemes:
        start = len(mine)
        mine.extend(p for p in phonemes if _sounded(p))
        bounds.append((start, len(mine)))
    if not sounds:
        return []
    to_said = _position_map(mine, said)
    out: list[WordTime] = []
    floor = 0  # no word starts before the previous one ends
    for word, (a, b) in zip(words, bounds, strict=True):
        if a == b:
            continue
        first, last = max(to_said(a), floor), max(to_said(b), floor)
        if last > first:
            start, end = sounds[first].start, sounds[last - 1].end
        else:  # nothing of what was said is this word's: an instant where it would be
            at = sounds[min(first, len(sounds) - 1)].start if first < len(sounds) else sounds[-1].end
            start = end = at
        if out and start < round(out[-1].end * sample_rate):
            start = round(out[-1].end * sample_rate)
        out.append(WordTime(word, start / sample_rate, max(start, end) / sample_rate))
        floor = last
    return out


def _position_map(mine: list[str], said: list[str]) -> Callable[[int], int]:
    """A function from a boundary in ``mine`` (0..len) to the matching boundary in ``said``."""
    opcodes = difflib.SequenceMatcher(None, mine, said, autojunk=False).get_opcodes()

    def to_said(position: int) -> int:
        if position >= len(mine):
            return len(said)
        for tag, i1, i2, j1, j2 in opcodes:
            if not i1 <= position < i2:
                continue  # inserts (i1 == i2) hold no position of ours: what they add goes to the word before
            if tag == "equal":
                return j1 + (position - i1)
            if tag == "replace":
                return j1 + round((position - i1) * (j2 - j1) / (i2 - i1))
            return j1  # delete: ours, not said
        return len(said)

    return to_said


def timed_phonemes(phonemes: Sequence[str], samples: Sequence[int], offset: int) -> tuple[list[TimedPhoneme], int]:
    """``phonemes`` with their sample counts laid end to end from ``offset``; and where they end."""
    out = []
    for phoneme, n in zip(phonemes, samples, strict=True):
        out.append(TimedPhoneme(phoneme, offset, offset + int(n)))
        offset += int(n)
    return out, offset

