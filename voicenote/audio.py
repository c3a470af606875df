"""Audio containers. The engines give float32 mono; events and storage carry 16-bit PCM WAV.

``encode`` turns that WAV into any of the six API formats with PyAV (FFmpeg inside the wheel):
mp3 (LAME), opus (libopus in Ogg, resampled to 48 kHz as Opus requires), aac (ADTS), flac, wav, and
pcm (raw 16-bit little-endian samples at the voice's own rate, no header). ``voicenote.audio_stream`` writes
the same formats a chunk at a time, for streaming answers.
"""

from __future__ import annotations

import io
import wave
from typing import NamedTuple

import numpy as np

from voicenote.errors import InvalidInput


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
    # Not audio/L16: that type is big-endian by definition (RFC 2586); ours is little-endian.
    "pcm": "audio/pcm",
}


class UnsupportedFormat(InvalidInput):
    code = "unsupported_format"


class EncodeFailed(UnsupportedFormat):
    """The WAV could not be encoded; a subclass so callers that catch UnsupportedFormat fail the job."""

    code = "encode_failed"


class Codec(NamedTuple):
    """How one compressed format is written with PyAV (``encode`` here, the stream encoders in ``audio_stream``)."""

    container: str  # the FFmpeg muxer
    codec: str
    sample_format: str
    forced_rate: int | None  # the rate the codec requires (Opus: 48 kHz), or None: the voice's own
    bit_rate: int | None

    def output_rate(self, sample_rate: int) -> int:
        return self.forced_rate or sample_rate


# The compressed formats (wav and pcm are written without FFmpeg).
CODECS: dict[str, Codec] = {
    "mp3": Codec("mp3", "libmp3lame", "s16p", None, 64_000),
    "opus": Codec("ogg", "libopus", "s16", 48_000, 32_000),
    "aac": Codec("adts", "aac", "fltp", None, 64_000),
    "flac": Codec("flac", "flac", "s16", None, None),
}


def _read_wav(wav: bytes) -> tuple[np.ndarray, int]:
    try:
        with wave.open(io.BytesIO(wav), "rb") as w:
            if w.getsampwidth() != 2:
                raise EncodeFailed(f"expected 16-bit WAV, got {8 * w.getsampwidth()}-bit")
            channels, rate = w.getnchannels(), w.getframerate()
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (wave.Error, EOFError) as exc:
        raise EncodeFailed(f"not a readable WAV: {exc}") from exc
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype("<i2")
    return samples, rate


def encode(wav: bytes, fmt: str) -> bytes:
    """Re-encode a 16-bit WAV into ``fmt`` (one of CONTENT_TYPES)."""
    if fmt == "wav":
        return wav
    if fmt not in CONTENT_TYPES:
        raise UnsupportedFormat(f"format {fmt!r} is not one of {', '.join(CONTENT_TYPES)}")
    samples, rate = _read_wav(wav)
    if fmt == "pcm":
        return samples.astype("<i2").tobytes()
    return _ffmpeg_encode(samples, rate, fmt)


def _ffmpeg_encode(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    import av  # imported here: only the storage side encodes, and the import costs ~100 ms

    spec = CODECS[fmt]
    out_rate = spec.output_rate(rate)
    buf = io.BytesIO()
    try:
        with av.open(buf, mode="w", format=spec.container) as container:
            stream = container.add_stream(spec.codec, rate=out_rate)
            assert isinstance(stream, av.AudioStream)  # CODECS names audio codecs only
            stream.layout = "mono"
            if spec.bit_rate:
                stream.bit_rate = spec.bit_rate
            resampler = av.AudioResampler(format=spec.sample_format, layout="mono", rate=out_rate)
            frame = av.AudioFrame.from_ndarray(samples.astype(np.int16).reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = rate
            frame.pts = None
            for chunk in (*resampler.resample(frame), *resampler.resample(None)):
                chunk.pts = None
                for packet in stream.encode(chunk):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
    except av.FFmpegError as exc:
        raise EncodeFailed(f"{fmt} encoding failed: {exc}") from exc
    return buf.getvalue()


EXTENSIONS = {"wav": "wav", "mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac", "pcm": "pcm"}
