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
# Sampling parameters (S1-mini's); the ranges the engine accepts. top_p and repetition_penalty exclude 0.
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)
REPETITION_PENALTY_RANGE = (0.0, 2.0)
SEED_RANGE = (0, 2**63 - 1)  # an Avro long


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
