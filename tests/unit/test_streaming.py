"""Pure parts of streaming speech: incremental encoders, the streaming WAV header, SSE framing, segment pieces."""

from __future__ import annotations

import base64
import io
import json
import struct
from typing import Any

import av
import numpy as np
import pytest

from producer_api.sse import sse_delta, sse_done
from stream_workers.synthesis.segmentation import join_audio, joined_piece, split_text
from voicenote.audio import EncodeFailed
from voicenote.audio_stream import UNKNOWN_SIZE, stream_encoder, streaming_wav_header

RATE = 22050


def _chunks(n: int = 4) -> list[bytes]:
    t = np.arange(RATE // 2)
    return [(np.sin(t * 0.03 * (k + 1)) * 9000).astype("<i2").tobytes() for k in range(n)]


def _decoded_samples(data: bytes) -> tuple[int, int]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        n = sum(frame.samples for frame in container.decode(stream))
        return n, stream.rate


def test_streaming_wav_header_says_unknown_length_and_describes_16_bit_mono() -> None:
    header = streaming_wav_header(RATE)
    assert len(header) == 44 and header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", header[4:8])[0] == UNKNOWN_SIZE == struct.unpack("<I", header[40:44])[0]
    channels, rate, byte_rate, align, bits = struct.unpack("<HIIHH", header[22:36])
    assert (channels, rate, byte_rate, align, bits) == (1, RATE, 2 * RATE, 2, 16)


def test_wav_and_pcm_streams_are_the_samples_in_order() -> None:
    chunks = _chunks()
    wav, pcm = stream_encoder("wav"), stream_encoder("pcm")
    wav_out = [wav.feed(c, RATE) for c in chunks] + [wav.finish()]
    assert wav_out[0][:44] == streaming_wav_header(RATE) and b"".join(wav_out)[44:] == b"".join(chunks)
    assert b"".join(pcm.feed(c, RATE) for c in chunks) + pcm.finish() == b"".join(chunks)


class _Pipe(io.RawIOBase):
    """A non-seekable reader, as a client reading the HTTP body sees it."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)


def test_a_whole_streamed_wav_is_a_valid_file_for_wave_and_pyav() -> None:
    """The whole body of a streamed wav: Python's wave reads the format and every sample (its frame count is the
    header's "unknown" size, 0xFFFFFFFF // 2); PyAV decodes every sample, from a seekable file and from a pipe."""
    import wave

    chunks = _chunks()
    encoder = stream_encoder("wav")
    data = b"".join(encoder.feed(c, RATE) for c in chunks) + encoder.finish()
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, RATE)
        assert reader.getnframes() == UNKNOWN_SIZE // 2
        assert reader.readframes(reader.getnframes()) == b"".join(chunks)
    expected = sum(len(c) for c in chunks) // 2
    assert _decoded_samples(data) == (expected, RATE)
    with av.open(_Pipe(data)) as container:  # type: ignore[arg-type]
        stream = container.streams.audio[0]
        pcm = b"".join(bytes(frame.planes[0])[:frame.samples * 2] for frame in container.decode(stream))
    assert stream.codec_context.name == "pcm_s16le" and pcm == b"".join(chunks)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_compressed_streams_come_in_pieces_and_decode_to_the_whole_duration(fmt: str) -> None:
    encoder = stream_encoder(fmt)
    chunks = _chunks()
    pieces = [encoder.feed(c, RATE) for c in chunks] + [encoder.finish()]
    assert sum(1 for p in pieces if p) >= 2, "everything came at the end: not incremental"
    samples, rate = _decoded_samples(b"".join(pieces))
    seconds = sum(len(c) // 2 for c in chunks) / RATE
    assert abs(samples / rate - seconds) < 0.1, (fmt, samples / rate, seconds)


def test_an_unknown_format_and_a_changing_rate_are_refused() -> None:
    with pytest.raises(EncodeFailed):
        stream_encoder("ogg-vorbis")
    encoder = stream_encoder("mp3")
    encoder.feed(_chunks(1)[0], RATE)
    with pytest.raises(EncodeFailed, match="sample rate"):
        encoder.feed(_chunks(1)[0], 16000)


def test_sse_events_are_openais_speech_events() -> None:
    delta = sse_delta(b"\x01\x02")
    assert delta.startswith(b"data: ") and delta.endswith(b"\n\n")
    assert json.loads(delta[6:]) == {"type": "speech.audio.delta", "audio": base64.b64encode(b"\x01\x02").decode()}
    assert json.loads(sse_done({"input_characters": 3})[6:]) == {"type": "speech.audio.done", "usage": {"input_characters": 3}}


@pytest.mark.parametrize("count", [1, 2, 5])
def test_segment_pieces_concatenate_to_the_joined_audio(count: int) -> None:
    rng = np.random.default_rng(count)
    parts = [rng.uniform(-0.5, 0.5, 300 + 50 * i).astype(np.float32) for i in range(count)]
    pieces = [joined_piece(p, i, count, 8000) for i, p in enumerate(parts)]
    assert np.array_equal(np.concatenate(pieces), join_audio(parts, 8000))


def test_a_streaming_split_makes_the_first_segment_short_and_keeps_every_word() -> None:
    text = "First sentence here, it is long enough to matter.   Second one follows it. " * 12
    segments = split_text(text, 300, first_max_chars=60)
    assert len(segments[0]) <= 60 and all(len(s) <= 300 for s in segments)
    assert " ".join(segments) == " ".join(text.split())
    assert split_text(text, 300, first_max_chars=400) == split_text(text, 300)  # looser than the rest: no effect
    assert split_text("Hi.", 300, first_max_chars=60) == ["Hi."]
