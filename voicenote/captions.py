"""Word timestamps as data: the ``[{word, start, end}]`` list (seconds) a Piper job carries, its JSON form in
events and storage, and the subtitle files (WebVTT, SRT) made from it.

Shared by the workers (which make the list) and the API (which serves it), so both agree on one form.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CAPTION_FORMATS = ("vtt", "srt")
CAPTION_CONTENT_TYPES = {"vtt": "text/vtt; charset=utf-8", "srt": "application/x-subrip; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class WordTime:
    """One spoken word of the input and where it lies in the audio, in seconds from the audio's start."""

    word: str
    start: float
    end: float

    def shifted(self, seconds: float) -> WordTime:
        return WordTime(self.word, self.start + seconds, self.end + seconds)

    def to_dict(self) -> dict[str, float | str]:
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3)}


def dumps(words: Iterable[WordTime]) -> str:
    """The compact JSON text of ``words`` (what events carry and storage holds), milliseconds precision."""
    return json.dumps([w.to_dict() for w in words], ensure_ascii=False, separators=(",", ":"))


def loads(text: str | bytes) -> list[WordTime]:
    return [WordTime(str(d["word"]), float(d["start"]), float(d["end"])) for d in json.loads(text)]


def cues(words: Sequence[WordTime], *, max_words: int = 7, max_seconds: float = 3.5, pause: float = 0.6) -> list[WordTime]:
    """Words grouped into subtitle cues: a cue ends after ``max_words`` words, at ``max_seconds`` long, at a
    pause of ``pause`` seconds, or after a word that ends a sentence."""
    out: list[WordTime] = []
    group: list[WordTime] = []

    def flush() -> None:
        if group:
            out.append(WordTime(" ".join(w.word for w in group), group[0].start, group[-1].end))
            group.clear()

    for w in words:
        if group and (len(group) >= max_words or w.end - group[0].start > max_seconds or w.start - group[-1].end >= pause):
            flush()
        group.append(w)
        if w.word.rstrip("\"'”’)]").endswith((".", "!", "?", "…")):
            flush()
    flush()
    return out


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def to_vtt(words: Sequence[WordTime]) -> str:
    """A WebVTT file of ``words`` grouped into cues."""
    lines = ["WEBVTT", ""]
    for n, cue in enumerate(cues(words), 1):
        lines += [str(n), f"{_clock(cue.start, '.')} --> {_clock(cue.end, '.')}", cue.word.replace("-->", "->"), ""]
    return "\n".join(lines)


def to_srt(words: Sequence[WordTime]) -> str:
    """A SubRip file of ``words`` grouped into cues."""
    lines = []
    for n, cue in enumerate(cues(words), 1):
        lines += [str(n), f"{_clock(cue.start, ',')} --> {_clock(cue.end, ',')}", cue.word, ""]
    return "\n".join(lines)
