"""Registered (vc_) voices from the audio store: the codes cache, the LRU and its TTL (local store backend)."""

from __future__ import annotations

import asyncio
import io
import json
import wave

import numpy as np
import pytest

from stream_workers.engine.s1mini.voices import (
    StoreVoices,
    VoiceNotFound,
    VoiceRegistry,
    VoiceUnusable,
    codes_name,
    voice_key,
)
from voicenote.registered_voices import voice_prefix
from voicenote.storage.local import LocalAudioStore

FP = "0123456789abcdef"


def vid(n: int) -> str:
    return f"vc_{n:024x}"


def wav_bytes(samples: np.ndarray, rate: int = 44100, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


class CountingEncoder:
    """Codes derived from the clip (its length and loudness), counting the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def fingerprint(self) -> str:
        return FP

    def encode(self, samples: np.ndarray) -> np.ndarray:
        self.calls += 1
        frames = -(-samples.size // 2048)
        base = int(round(float(np.abs(samples).max()) * 100))
        return np.arange(10 * frames, dtype=np.int64).reshape(10, frames) + base


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path):
    return LocalAudioStore(tmp_path / "store")


async def register(store, voice_id, *, transcript="hello there", seconds=0.5, loudness=0.5):
    t = np.arange(int(44100 * seconds)) / 44100
    await store.put(voice_key(voice_id, "reference.wav"), wav_bytes(loudness * np.sin(2 * np.pi * 200 * t)), "audio/wav")
    meta = {"voice_id": voice_id, "owner": "anonymous", "name": "n", "transcript": transcript, "sample_rate": 44100,
            "duration_s": seconds, "created_at_ms": 1, "ephemeral": False}
    await store.put(voice_key(voice_id, "meta.json"), json.dumps(meta).encode(), "application/json")


def voices(store, encoder=None, **kw):
    return StoreVoices(store, encoder or CountingEncoder(), 10, **kw)


async def test_first_use_encodes_and_writes_codes_back_then_memory_then_other_workers_read_them(store):
    await register(store, vid(1), loudness=0.25)
    enc = CountingEncoder()
    sv = voices(store, enc)
    item = await sv.resolve(vid(1))
    assert item.text == "hello there" and enc.calls == 1 and sv.encodes == 1
    stored = np.load(io.BytesIO(await store.get(voice_key(vid(1), codes_name(FP)))))
    assert stored.shape == (10, 11) and (stored == item.codes).all()
    assert item.codes[0, 0] == 25  # derived from this clip
    # again: from memory, no store read
    assert await sv.resolve(vid(1)) is item and sv.hits == 1 and sv.fetches == 1
    # another worker (a restart): reads the codes, encodes nothing
    enc2 = CountingEncoder()
    item2 = await voices(store, enc2).resolve(vid(1))
    assert enc2.calls == 0 and (item2.codes == item.codes).all()


async def test_codes_of_another_checkpoint_are_not_used(store):
    await register(store, vid(2))
    await store.put(voice_key(vid(2), codes_name("ffffffffffffffff")), b"not ours", "application/octet-stream")
    enc = CountingEncoder()
    await voices(store, enc).resolve(vid(2))
    assert enc.calls == 1


async def test_unreadable_or_misshaped_codes_are_encoded_again(store):
    await register(store, vid(3))
    key = voice_key(vid(3), codes_name(FP))
    for bad in (b"garbage", _npy(np.zeros((4, 3), dtype=np.int64)), _npy(np.full((10, 3), -1)), _npy(np.zeros((10, 3)))):
        await store.put(key, bad, "application/octet-stream")
        enc = CountingEncoder()
        item = await voices(store, enc).resolve(vid(3))
        assert enc.calls == 1 and item.codes.shape == (10, 11)
        assert np.load(io.BytesIO(await store.get(key))).shape == (10, 11)  # overwritten with good codes


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


async def test_unknown_and_malformed_ids_are_voice_not_found(store):
    sv = voices(store)
    for name in (vid(9), "vc_XYZ", "vc_" + "0" * 23, "vc_" + "A" * 24):
        with pytest.raises(VoiceNotFound) as ei:
            await sv.resolve(name)
        assert ei.value.code == "voice_not_found"


async def test_meta_without_reference_is_not_found_and_bad_files_are_unusable(store):
    await store.put(voice_key(vid(4), "meta.json"), json.dumps({"transcript": "x"}).encode(), "application/json")
    with pytest.raises(VoiceNotFound, match="no reference.wav"):
        await voices(store).resolve(vid(4))
    await store.put(voice_key(vid(4), "reference.wav"), wav_bytes(np.zeros(100), rate=22050), "audio/wav")
    with pytest.raises(VoiceUnusable, match="44100 Hz") as ei:
        await voices(store).resolve(vid(4))
    assert ei.value.code == "voice_unavailable"
    await store.put(voice_key(vid(4), "reference.wav"), b"RIFF nonsense", "audio/wav")
    with pytest.raises(VoiceUnusable, match="not a readable WAV"):
        await voices(store).resolve(vid(4))
    await store.put(voice_key(vid(4), "meta.json"), b"{not json", "application/json")
    with pytest.raises(VoiceUnusable, match="meta.json"):
        await voices(store).resolve(vid(4))


async def test_lru_keeps_the_most_recently_used(store):
    for n in (1, 2, 3):
        await register(store, vid(n))
    sv = voices(store, size=2)
    await sv.resolve(vid(1))
    await sv.resolve(vid(2))
    await sv.resolve(vid(1))  # 1 is now the most recent
    await sv.resolve(vid(3))  # evicts 2
    assert sv.lookup(vid(1)) is not None and sv.lookup(vid(3)) is not None
    assert sv.lookup(vid(2)) is None
    with pytest.raises(ValueError):
        voices(store, size=0)


async def test_ttl_rechecks_the_store_so_a_deleted_voice_stops(store, tmp_path):
    await register(store, vid(5))
    clock = Clock()
    enc = CountingEncoder()
    sv = voices(store, enc, ttl_s=60, clock=clock)
    item = await sv.resolve(vid(5))
    clock.t += 59
    assert await sv.resolve(vid(5)) is item and sv.rechecks == 0
    clock.t += 2  # past the TTL: re-checked, still there, not fetched nor encoded again
    assert await sv.resolve(vid(5)) is item and sv.rechecks == 1 and enc.calls == 1 and sv.fetches == 1
    await store.delete_many(await store.list_keys(voice_prefix(vid(5))))  # what the API's DELETE does
    clock.t += 30  # within the TTL of the last check: still served from memory
    assert await sv.resolve(vid(5)) is item
    clock.t += 31
    with pytest.raises(VoiceNotFound):
        await sv.resolve(vid(5))
    assert sv.lookup(vid(5)) is None


async def test_concurrent_first_uses_share_one_fetch(store):
    await register(store, vid(6))
    enc = CountingEncoder()
    sv = voices(store, enc)
    items = await asyncio.gather(*(sv.resolve(vid(6)) for _ in range(5)))
    assert enc.calls == 1 and sv.fetches == 1 and all(i is items[0] for i in items)


async def test_registry_without_a_store_finds_no_registered_voice():
    reg = VoiceRegistry(None, 10)
    errors = await reg.prepare([vid(8), "default", vid(7), vid(7)])
    assert sorted(errors) == [vid(7), vid(8)] and all(e.code == "voice_not_found" for e in errors.values())
    with pytest.raises(VoiceNotFound):
        reg.get(vid(7))


async def test_registry_with_store(store):
    await register(store, vid(7), transcript=" the words ")
    reg = VoiceRegistry(None, 10, build=lambda text, codes: (text, codes.shape))
    reg.attach_store(voices(store))
    errors = await reg.prepare([vid(7), "default", vid(99)])
    assert list(errors) == [vid(99)] and errors[vid(99)].code == "voice_not_found"
    assert reg.get(vid(7)) == ("the words", (10, 11))
    assert reg.get(vid(7)) is reg.get(vid(7))  # built once
    with pytest.raises(VoiceNotFound, match="not resolved"):
        reg.get(vid(8))
