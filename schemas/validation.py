"""The rules a request event must satisfy, shared by the API (400s) and the workers (direct
publishers skip the API, so the workers check again and fail the job with ``invalid_request``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_INPUT_CHARS = 4096
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
PRIORITIES = ("interactive", "batch")
SPEED_RANGE = (0.25, 4.0)


def request_problems(record: Mapping[str, Any], *, max_chars: int = MAX_INPUT_CHARS) -> list[str]:
    """Every reason ``record`` is not a valid request; empty when it is."""
    problems = []
    if not JOB_ID.match(str(record.get("job_id", ""))):
        problems.append("job_id must be 1-64 characters of [A-Za-z0-9_-]")
    text = record.get("text") or ""
    if not text.strip():
        problems.append("text must not be empty")
    elif len(text) > max_chars:
        problems.append(f"text is {len(text)} characters; the maximum is {max_chars}")
    if record.get("format", "wav") not in FORMATS:
        problems.append(f"format must be one of {', '.join(FORMATS)}")
    speed = record.get("speed", 1.0)
    if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
        problems.append(f"speed must be between {SPEED_RANGE[0]} and {SPEED_RANGE[1]}")
    if record.get("priority", "batch") not in PRIORITIES:
        problems.append(f"priority must be one of {', '.join(PRIORITIES)}")
    return problems
