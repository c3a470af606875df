"""The rules a request event must satisfy, shared by the API (400s) and the workers (direct
publishers skip the API, so the workers check again and fail the job with ``invalid_request``)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Literal, get_args

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_INPUT_CHARS = 4096
# The audio formats, once: the API's request model types its field with the Literal, everyone else checks the tuple.
Format = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
FORMATS: tuple[str, ...] = get_args(Format)
PRIORITIES = ("interactive", "batch")
SPEED_RANGE = (0.25, 4.0)
# Sampling parameters (S1-mini's); the ranges the engine accepts. top_p and repetition_penalty exclude 0.
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)
REPETITION_PENALTY_RANGE = (0.0, 2.0)
SEED_RANGE = (0, 2**63 - 1)  # an Avro long

# Tab and line breaks are ordinary text; every other C0/C1 control character is refused rather than
# stripped, so what the caller sent is what is spoken (and a NUL never reaches the engine).
_ALLOWED_CONTROLS = frozenset("\t\n\r")


def speakable(text: str) -> bool:
    """Whether ``text`` holds anything a voice can say: at least one letter or digit in any script.

    Punctuation, symbols, whitespace and control characters alone ("...", "\\u0007") give the engine
    no phonemes; they are refused up front (``empty_utterance``) instead of failing in the engine.
    """
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def bad_characters(text: str) -> str | None:
    """A message naming the first control character or lone surrogate in ``text``; None when clean."""
    for i, ch in enumerate(text):
        category = unicodedata.category(ch)
        if (category == "Cc" and ch not in _ALLOWED_CONTROLS) or category == "Cs":
            kind = "a lone surrogate" if category == "Cs" else "a control character"
            return (f"contains {kind} (U+{ord(ch):04X}) at position {i}; remove control characters "
                    "(tab and line breaks are allowed)")
    return None


def speed_problem(speed: float) -> str | None:
    low, high = SPEED_RANGE
    if not isinstance(speed, (int, float)) or isinstance(speed, bool) or not math.isfinite(speed):
        return f"speed must be a finite number between {low} and {high}; got {speed!r}"
    if not low <= speed <= high:
        return f"speed must be between {low} and {high}; got {speed:g}"
    return None


REQUEST_DIGEST_FIELD = "request_digest"  # on the job record: which request this job id belongs to


def request_digest(record: Mapping[str, Any]) -> str:
    """A short stable digest of a decoded request event: a redelivery of the same event has the same
    one, another request reusing its job id (a direct publisher's bug, a replay done wrong) does not."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def valid_job_id(job_id: object) -> bool:
    """Whether ``job_id`` is one: 1-64 characters of [A-Za-z0-9_-], wholly (``JOB_ID.match`` alone lets a trailing
    newline through). A request with another is dead-lettered; nothing is recorded or ended under it."""
    return isinstance(job_id, str) and JOB_ID.fullmatch(job_id) is not None


def request_problems(record: Mapping[str, Any], *, max_chars: int = MAX_INPUT_CHARS) -> list[str]:
    """Every reason ``record`` is not a valid request; empty when it is (a bad job id is always the first)."""
    problems = []
    if not valid_job_id(record.get("job_id", "")):
        problems.append("job_id must be 1-64 characters of [A-Za-z0-9_-]")
    text = record.get("text") or ""
    if not text.strip():
        problems.append("text must not be empty")
    elif len(text) > max_chars:
        problems.append(f"text is {len(text)} characters; the maximum is {max_chars}")
    elif not speakable(text):
        problems.append("text has nothing speakable (no letters or digits)")
    elif (bad := bad_characters(text)) is not None:
        problems.append(f"text {bad}")
    if record.get("format", "wav") not in FORMATS:
        problems.append(f"format must be one of {', '.join(FORMATS)}")
    if (bad_speed := speed_problem(record.get("speed", 1.0))) is not None:
        problems.append(bad_speed)
    problems += _sampling_problems(record)
    if record.get("priority", "batch") not in PRIORITIES:
        problems.append(f"priority must be one of {', '.join(PRIORITIES)}")
    return problems


def _sampling_problems(record: Mapping[str, Any]) -> list[str]:
    problems = []
    # A value of the wrong type is left to the Avro encoder, which names the field it does not match.
    temperature, top_p, penalty, seed = (
        value if isinstance(value, int | float) and not isinstance(value, bool) else None
        for value in (record.get(k) for k in ("temperature", "top_p", "repetition_penalty", "seed")))
    if temperature is not None and not TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]:
        problems.append(f"temperature must be between {TEMPERATURE_RANGE[0]} and {TEMPERATURE_RANGE[1]}")
    if top_p is not None and not TOP_P_RANGE[0] < top_p <= TOP_P_RANGE[1]:
        problems.append(f"top_p must be above {TOP_P_RANGE[0]} and at most {TOP_P_RANGE[1]}")
    if penalty is not None and not REPETITION_PENALTY_RANGE[0] < penalty <= REPETITION_PENALTY_RANGE[1]:
        problems.append(f"repetition_penalty must be above {REPETITION_PENALTY_RANGE[0]} and at most {REPETITION_PENALTY_RANGE[1]}")
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        problems.append("seed must be a non-negative 64-bit integer")
    return problems
