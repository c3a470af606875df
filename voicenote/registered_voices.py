"""Registered (cloned) S1-mini voices in the audio store: the contract the API and the workers share.

docs/voices.md is the full contract. A voice ``vc_<24 hex>`` lives under ``voices/<voice_id>/`` in the
audio store (S3 or local), at the bucket's (or folder's) root, outside ``storage.key_prefix``, so the audio's
lifecycle rule does not expire it:

- ``reference.wav``: the clip, mono 16-bit PCM WAV at 44,100 Hz, 3-30 s (the API writes it);
- ``meta.json``: :class:`VoiceMeta` as UTF-8 JSON (the API writes it);
- ``codes-<fingerprint>.npy``: the codec's (10, T) codes of reference.wav (a worker writes it).

Deleting a voice deletes every key under its prefix. The API decodes and checks clips here
(:func:`decode_clip`), so the checks and their codes are one list.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import wave
from dataclasses import asdict, dataclass

import numpy as np

from voicenote.errors import InvalidInput

VOICE_ID = re.compile(r"^vc_[0-9a-f]{24}$")
VOICE_ID_PREFIX = "vc_"
VOICES_PREFIX = "voices/"
REFERENCE = "reference.wav"
META = "meta.json"
SAMPLE_RATE = 44_100
MIN_SECONDS = 3.0
MAX_SECONDS = 30.0
# Below this RMS (dBFS, of the whole clip after the downmix) a clip is refused as silent: speech recorded at any
# usable level sits around -30 to -15 dBFS; -50 dBFS is background hiss.
SILENCE_DBFS = -50.0
CLIP_FORMATS = ("wav", "mp3", "flac", "ogg")  # PyAV (FFmpeg) container names
MAX_TRANSCRIPT_CHARS = 2000
MAX_NAME_CHARS = 64


def is_voice_id(name: str) -> bool:
    """Whether ``name`` names a registered voice (built-in voice names never start with ``vc_``)."""
    return name.startswith(VOICE_ID_PREFIX)


def new_voice_id() -> str:
    return VOICE_ID_PREFIX + secrets.token_hex(12)


def voice_prefix(voice_id: str) -> str:
    """``voices/<voice_id>/``: every key of the voice starts with it."""
    if not VOICE_ID.match(voice_id):
        raise InvalidInput(f"voice id {voice_id!r} is not vc_ followed by 24 lowercase hex characters")
    return f"{VOICES_PREFIX}{voice_id}/"


def reference_key(voice_id: str) -> str:
    return voice_prefix(voice_id) + REFERENCE


def meta_key(voice_id: str) -> str:
    return voice_prefix(voice_id) + META


def codes_key(voice_id: str, fingerprint: str) -> str:
    """Where a worker keeps the codec's codes of the reference (fingerprint: 16 hex of the checkpoint's sha256)."""
    return voice_prefix(voice_id) + f"codes-{fingerprint}.npy"


@dataclass(frozen=True)
class VoiceMeta:
    voice_id: str
    owner: str  # the API key's name, or "anonymous" when auth is off
    name: str  # the user's label ("" when none)
    transcript: str  # what the reference clip says
    sample_rate: int
    duration_s: float
    created_at_ms: int
    ephemeral: bool  # stored for one request's inline `references`, swept after a while (docs/voices.md)

    def dumps(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode()

    @classmethod
    def loads(cls, data: bytes) -> VoiceMeta:
        raw = json.loads(data.decode())
        return cls(voice_id=str(raw["voice_id"]), owner=str(raw["owner"]), name=str(raw.get("name", "")),
                   transcript=str(raw["transcript"]), sample_rate=int(raw["sample_rate"]), duration_s=float(raw["duration_s"]),
                   created_at_ms=int(raw["created_at_ms"]), ephemeral=bool(raw.get("ephemeral", False)))


class ClipRejected(InvalidInput):
    """A reference clip the service cannot use; ``code`` says which check refused it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Clip:
    wav: bytes  # mono 16-bit PCM WAV at SAMPLE_RATE
    duration_s: float
    rms_dbfs: float


def decode_clip(data: bytes) -> Clip:
    """Any wav/mp3/flac/ogg clip to mono 16-bit 44.1 kHz WAV, checked: 3-30 s and not silent.

    Decoding stops once the clip is past the limit, so a long upload costs no more than 30 s of audio."""
    import av  # the API imports this module at start-up; PyAV only when a clip comes

    if not data:
        raise ClipRejected("clip_undecodable", "the audio file is empty; send a wav, mp3, flac or ogg clip of 3-30 s of speech")
    chunks: list[np.ndarray] = []
    total, limit = 0, int((MAX_SECONDS + 0.5) * SAMPLE_RATE)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            names = set(container.format.name.split(","))
            if not names & set(CLIP_FORMATS):
                raise ClipRejected("clip_format_unsupported", f"the audio is {container.format.name}; send wav, mp3, flac or ogg")
            if not container.streams.audio:
                raise ClipRejected("clip_undecodable", "the file has no audio stream; send a wav, mp3, flac or ogg clip")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(container.streams.audio[0]):
                chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
                total += frame.samples * SAMPLE_RATE // (frame.sample_rate or SAMPLE_RATE)
                if total > limit:  # past the limit: enough to refuse it
                    break
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except ClipRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever FFmpeg makes of arbitrary bytes, the answer is the same 400
        raise ClipRejected("clip_undecodable", f"the audio could not be decoded ({exc}); send a wav, mp3, flac or ogg clip") from None
    samples = np.concatenate(chunks).astype("<i2") if chunks else np.zeros(0, dtype="<i2")
    duration = len(samples) / SAMPLE_RATE
    if duration > MAX_SECONDS:
        raise ClipRejected("clip_too_long", f"the clip is longer than {MAX_SECONDS:g} s; send {MIN_SECONDS:g}-{MAX_SECONDS:g} s "
                                            "of one speaker (cut it: 10-20 s of clear speech is best)")
    if duration < MIN_SECONDS:
        raise ClipRejected("clip_too_short", f"the clip is {duration:.2f} s long; send at least {MIN_SECONDS:g} s "
                                             f"(up to {MAX_SECONDS:g} s) of one speaker")
    rms = float(np.sqrt(np.mean((samples.astype(np.float64) / 32768.0) ** 2)))
    dbfs = 20 * np.log10(rms) if rms > 0 else -np.inf
    if dbfs < SILENCE_DBFS:
        raise ClipRejected("clip_silent", f"the clip is silent (RMS {dbfs:.1f} dBFS, below {SILENCE_DBFS:g} dBFS); "
                                          "send a recording of someone speaking, at a normal level")
    return Clip(_wav(samples), round(duration, 3), float(dbfs))


def _wav(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()
