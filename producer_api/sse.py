"""Server-sent events framing for streaming speech (``stream_format: "sse"``), as OpenAI's speech stream frames it.

Each event is one ``data:`` line of compact JSON and a blank line: ``speech.audio.delta`` (a piece of the audio,
base64), ``speech.timestamps`` (our extension: the words of the audio that follows), ``speech.audio.done`` (with
the usage) and ``error`` (the stream was cut short).
"""

from __future__ import annotations

import base64
import json
from typing import Any


def sse_event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def sse_delta(audio: bytes) -> bytes:
    """OpenAI's ``speech.audio.delta``: a piece of the audio, base64."""
    return sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode()})


def sse_done(usage: dict[str, int]) -> bytes:
    return sse_event({"type": "speech.audio.done", "usage": usage})
