"""Audio containers. The engines give float32 mono; events and storage carry 16-bit PCM WAV."""

from __future__ import annotations

import io
import wave

import numpy as np


def to_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def wav_info(data: bytes) -> tuple[int, int]:
    """(sample_rate, frame count) of a WAV file."""
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.getframerate(), w.getnframes()


CONTENT_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "pcm": "audio/L16",
}


class UnsupportedFormat(ValueError):
    code = "unsupported_format"


def encode(wav: bytes, fmt: str) -> bytes:
    """Re-encode a WAV into ``fmt``."""
    if fmt == "wav":
        return wav
    raise UnsupportedFormat(f"format {fmt!r} has no encoder installed")


EXTENSIONS = {"wav": "wav", "mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac", "pcm": "pcm"}
