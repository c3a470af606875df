"""What several services share: the answer's audio, public links, and the ignored-parameters header."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from voicenote.links import Links as Links  # the public URLs: the projection rebuild restores answers holding them

IGNORED_HEADER = "X-Voicenote-Ignored-Params"


@dataclass(frozen=True)
class Audio:
    data: bytes
    content_type: str
    headers: dict[str, str]


def new_batch_id() -> str:
    return "batch_" + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")


def ignored_header(ignored: list[str]) -> dict[str, str]:
    return {IGNORED_HEADER: ", ".join(ignored)} if ignored else {}


def audio_headers(job_id: str, fmt: str, record: dict[str, str], model_rate: int) -> dict[str, str]:
    """pcm has no header of its own: its rate, channels and sample format travel as HTTP headers."""
    headers = {"X-Job-Id": job_id}
    if fmt == "pcm":
        rate = record.get("sample_rate") or str(model_rate)
        headers.update({"X-Sample-Rate": rate, "X-Channels": "1", "X-Sample-Format": "s16le"})
    return headers
