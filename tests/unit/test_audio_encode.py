"""The six API formats: each encodes a WAV into something FFmpeg decodes back to the same audio."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from voicenote.audio import CONTENT_TYPES, EXTENSIONS, EncodeFailed, UnsupportedFormat, encode, to_wav

RATE = 22050


def _tone(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds), dtype=np.float32) / RATE
    return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def _decode(data: bytes) -> tuple[str, str, int, np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        return container.format.name, stream.codec_context.name, stream.rate, np.concatenate(frames).astype(np.float64)


@pytest.mark.parametrize(("fmt", "container", "codec", "rate"), [
    ("mp3", "mp3", "mp3float", RATE),
    ("opus", "ogg", "opus", 48000),
    ("aac", "aac", "aac", RATE),
    ("flac", "flac", "flac", RATE),
    ("wav", "wav", "pcm_s16le", RATE),
])
def test_container_formats_decode_back_to_the_tone(fmt: str, container: str, codec: str, rate: int) -> None:
    data = encode(to_wav(_tone(), RATE), fmt)
    got_container, got_codec, got_rate, samples = _decode(data)
    assert (got_container, got_codec, got_rate) == (container, codec, rate)
    # Lossy codecs pad a little; the length stays about one second and the tone is audible.
    assert 0.9 * rate <= len(samples) <= 1.2 * rate
    peak = np.max(np.abs(samples))
    scale = 32768.0 if peak > 2 else 1.0
    rms = float(np.sqrt(np.mean((samples / scale) ** 2)))
    assert 0.15 < rms < 0.3, rms  # a 0.3-amplitude sine has rms 0.212


def test_pcm_is_raw_little_endian_int16_at_the_voice_rate() -> None:
    tone = _tone(0.5)
    data = encode(to_wav(tone, RATE), "pcm")
    samples = np.frombuffer(data, dtype="<i2")
    assert len(samples) == len(tone)
    np.testing.assert_allclose(samples / 32767.0, tone, atol=1 / 16384)


def test_every_format_has_a_content_type_and_extension() -> None:
    assert set(CONTENT_TYPES) == set(EXTENSIONS) == {"mp3", "opus", "aac", "flac", "wav", "pcm"}


def test_unknown_format_and_bad_input_raise_with_codes() -> None:
    with pytest.raises(UnsupportedFormat) as unknown:
        encode(to_wav(_tone(0.1), RATE), "ogg-vorbis")
    assert unknown.value.code == "unsupported_format"
    with pytest.raises(EncodeFailed) as bad:
        encode(b"RIFF not really", "mp3")
    assert bad.value.code == "encode_failed"
