"""Incremental audio encoders: 16-bit mono PCM chunks in, the bytes of one API format out, as they come.

What a streaming answer sends (producer_api/services/streaming.py): ``stream_encoder(fmt)`` gives an encoder for
one stream; ``feed`` each chunk, then ``finish`` for the tail. pcm is the samples as they are; wav is a header
of unknown length (``streaming_wav_header``) and then the samples; mp3, opus, aac and flac go through one PyAV
encoder kept open for the whole stream, with the codecs and bit rates of ``voicenote.audio.encode``
(``voicenote.audio.CODECS``).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from voicenote.audio import CODECS, CONTENT_TYPES, EncodeFailed


class StreamEncoder:
    """Turns 16-bit mono PCM chunks into the bytes of one format, as they come."""

    def feed(self, pcm: bytes, sample_rate: int) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""


class PcmEncoder(StreamEncoder):
    def feed(self, pcm: bytes, sample_rate: int) -> bytes:
        return pcm


# A RIFF/data size of 0xFFFFFFFF: "unknown length, read to the end", as OpenAI's and Kokoro's streams send.
UNKNOWN_SIZE = 0xFFFFFFFF


def streaming_wav_header(sample_rate: int) -> bytes:
    """A 44-byte header for 16-bit mono PCM of unknown length."""
    return (b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", UNKNOWN_SIZE))


class WavEncoder(StreamEncoder):
    def __init__(self) -> None:
        self._started = False

    def feed(self, pcm: bytes, sample_rate: int) -> bytes:
        if self._started:
            return pcm
        self._started = True
        return streaming_wav_header(sample_rate) + pcm


class _Sink:
    """A write-only, non-seekable file for PyAV: the muxer cannot go back to patch a header we already sent."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


class CompressedEncoder(StreamEncoder):
    """mp3, opus (Ogg), aac (ADTS) or flac through one PyAV encoder kept open for the whole stream (same
    codecs and bit rates as :func:`voicenote.audio.encode`). Opus output comes a page at a time."""

    def __init__(self, fmt: str) -> None:
        self._fmt = fmt
        self._sink = _Sink()
        self._container: Any = None
        self._stream: Any = None
        self._resampler: Any = None
        self._rate = 0

    def _open(self, sample_rate: int) -> None:
        import av  # imported here: the import costs ~100 ms, and only streaming needs it in the API

        spec = CODECS[self._fmt]
        out_rate = spec.output_rate(sample_rate)
        self._container = av.open(self._sink, mode="w", format=spec.container)
        self._stream = self._container.add_stream(spec.codec, rate=out_rate)
        self._stream.layout = "mono"
        if spec.bit_rate:
            self._stream.bit_rate = spec.bit_rate
        self._resampler = av.AudioResampler(format=spec.sample_format, layout="mono", rate=out_rate)
        self._rate = sample_rate

    def _encode(self, frame: Any) -> None:
        for chunk in self._resampler.resample(frame):
            chunk.pts = None
            for packet in self._stream.encode(chunk):
                self._container.mux(packet)

    def feed(self, pcm: bytes, sample_rate: int) -> bytes:
        import av

        try:
            if self._container is None:
                self._open(sample_rate)
            elif sample_rate != self._rate:
                raise EncodeFailed(f"sample rate changed mid-stream ({self._rate} -> {sample_rate})")
            samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16).reshape(1, -1)
            if samples.size:
                frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = None
                self._encode(frame)
        except av.FFmpegError as exc:
            raise EncodeFailed(f"{self._fmt} encoding failed: {exc}") from exc
        return self._sink.take()

    def finish(self) -> bytes:
        import av

        if self._container is None:
            return b""
        try:
            self._encode(None)
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        except av.FFmpegError as exc:
            raise EncodeFailed(f"{self._fmt} encoding failed: {exc}") from exc
        return self._sink.take()


def stream_encoder(fmt: str) -> StreamEncoder:
    """A fresh encoder for one stream of ``fmt`` (one of ``voicenote.audio.CONTENT_TYPES``)."""
    if fmt == "pcm":
        return PcmEncoder()
    if fmt == "wav":
        return WavEncoder()
    if fmt in CODECS:
        return CompressedEncoder(fmt)
    raise EncodeFailed(f"format {fmt!r} is not one of {', '.join(CONTENT_TYPES)}")
