"""Registered reference voices.

Two sources:

- a directory: ``<voices_dir>/<name>/`` holding ``prompt.txt`` (what the reference audio says, UTF-8)
  and ``codes.npy`` (int array (10, T): the codec codes of the reference audio, semantic row first).
  The prompt tokens built from a voice are cached per worker in an LRU (:class:`VoiceRegistry`).
- the audio store, for voices registered through the API (``vc_`` ids, docs/voices.md):
  :class:`StoreVoices` fetches ``voices/<id>/meta.json`` and ``codes-<fingerprint>.npy``, encodes
  ``reference.wav`` with the codec encoder when the codes are not there yet, and writes them back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voicenote.registered_voices import SAMPLE_RATE, VOICE_ID, is_voice_id, voice_prefix

from ..base import UnknownVoice

log = logging.getLogger(__name__)

DEFAULT_VOICE = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class VoiceRegistry:
    def __init__(
        self,
        voices_dir: str | Path | None,
        num_codebooks: int,
        cache_size: int = 32,
        build: Callable[[str, np.ndarray], Any] | None = None,
    ) -> None:
        self.build = build
        self.dir = Path(voices_dir) if voices_dir else None
        self.num_codebooks = num_codebooks
        self.cache_size = max(1, cache_size)
        self.store: StoreVoices | None = None  # registered (vc_) voices: attach_store
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def names(self) -> list[str]:
        found = []
        if self.dir and self.dir.is_dir():
            for p in sorted(self.dir.iterdir()):
                if p.is_dir() and _NAME.match(p.name) and (p / "prompt.txt").exists() and (p / "codes.npy").exists():
                    found.append(p.name)
        return [DEFAULT_VOICE] + [n for n in found if n != DEFAULT_VOICE]

    def get(self, name: str) -> Any:
        """The cached prompt for a registered voice: ``build(text, codes)`` (or (text, codes) without a
        builder), codes (num_codebooks, T) int64. None for the default voice."""
        if name == DEFAULT_VOICE:
            return None
        if is_voice_id(name):
            return self._registered(name)
        with self._lock:
            if name in self._cache:
                self._cache.move_to_end(name)
                self.hits += 1
                return self._cache[name]
        text, codes = self._load(name)
        item = self.build(text, codes) if self.build else (text, codes)
        with self._lock:
            self.misses += 1
            self._cache[name] = item
            self._cache.move_to_end(name)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return item

    def attach_store(self, store: StoreVoices) -> None:
        """Serve registered ``vc_`` voices from the audio store (resolved first with :meth:`prepare`)."""
        self.store = store

    async def prepare(self, names: Sequence[str]) -> dict[str, UnknownVoice]:
        """Resolve the registered voices among ``names`` from the store; the error of each that failed."""
        errors: dict[str, UnknownVoice] = {}
        wanted = sorted({n for n in names if is_voice_id(n)})
        if self.store is None:
            return {n: VoiceNotFound(f"voice {n!r}: this worker has no voice store") for n in wanted}
        outcomes = await asyncio.gather(*(self.store.resolve(n) for n in wanted), return_exceptions=True)
        for name, outcome in zip(wanted, outcomes, strict=True):
            if isinstance(outcome, UnknownVoice):
                errors[name] = outcome
            elif isinstance(outcome, BaseException):
                log.warning("voice %s could not be resolved", name, exc_info=outcome)
                errors[name] = VoiceUnusable(f"voice {name!r}: {type(outcome).__name__}: {outcome}")
        return errors

    def _registered(self, name: str) -> Any:
        item = self.store.lookup(name) if self.store is not None else None
        if item is None:
            raise VoiceNotFound(f"voice {name!r} is not resolved on this worker (unknown, or evicted from its cache)")
        if item.prompt is None:
            item.prompt = self.build(item.text, item.codes) if self.build else (item.text, item.codes)
        return item.prompt

    def _load(self, name: str) -> tuple[str, np.ndarray]:
        if not self.dir or not _NAME.match(name) or not (self.dir / name).is_dir():
            raise UnknownVoice(f"unknown voice {name!r}")
        d = self.dir / name
        try:
            text = (d / "prompt.txt").read_text(encoding="utf-8").strip()
            codes = np.load(d / "codes.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UnknownVoice(f"voice {name!r} is not readable: {e}") from e
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks or not np.issubdtype(codes.dtype, np.integer):
            raise UnknownVoice(
                f"voice {name!r}: codes.npy must be an integer array ({self.num_codebooks}, T), got {codes.shape} {codes.dtype}"
            )
        if codes.size and codes.min() < 0:
            raise UnknownVoice(f"voice {name!r}: negative codes")
        return text, codes.astype(np.int64)


# ---------------------------------------------------------------- registered voices from the audio store
# A registered voice's id, its layout and its clip's rate are the API's and the workers' one contract:
# voicenote.registered_voices (VOICE_ID, SAMPLE_RATE, is_voice_id, voice_prefix).


class VoiceNotFound(UnknownVoice):
    code = "voice_not_found"


class VoiceUnusable(UnknownVoice):
    """The voice is in the store but its files cannot be used (bad WAV or meta.json), or the store failed."""

    code = "voice_unavailable"


def voice_key(voice_id: str, name: str) -> str:
    """Where a registered voice's files live: ``voices/<voice_id>/<name>`` at the store's root, outside the audio's
    key prefix so that the audio's expiry does not reach them (the contract: voicenote.registered_voices)."""
    return voice_prefix(voice_id) + name


def codes_name(fingerprint: str) -> str:
    return f"codes-{fingerprint}.npy"


def read_wav(data: bytes) -> np.ndarray:
    """reference.wav (mono 16-bit PCM at 44,100 Hz, as the API stores it) -> float32 samples in [-1, 1]."""
    import io
    import wave

    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != SAMPLE_RATE:
                raise ValueError(
                    f"expected mono 16-bit PCM at {SAMPLE_RATE} Hz, got {w.getnchannels()} channel(s), "
                    f"{8 * w.getsampwidth()}-bit, {w.getframerate()} Hz"
                )
            pcm = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise ValueError(f"not a readable WAV file: {e}") from e
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if samples.size == 0:
        raise ValueError("the WAV file has no samples")
    return samples


def npy_bytes(codes: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, codes, allow_pickle=False)
    return buf.getvalue()


@dataclass
class StoredVoice:
    text: str
    codes: np.ndarray  # (num_codebooks, T) int64
    checked_at: float  # the clock when the store last said the voice exists
    prompt: Any = None  # the engine's prompt prefix, built on first use


class ClipEncoder(Protocol):
    """What :class:`StoreVoices` needs of the codec encoder (codec_encoder.ClipEncoderLoader)."""

    def fingerprint(self) -> str: ...

    def encode(self, samples: np.ndarray) -> np.ndarray: ...


class StoreVoices:
    """Registered (``vc_``) voices read from the audio store, kept in an LRU with a TTL.

    Bridge between the async store and the engine's threads: the engine takes its prompts synchronously
    in ``submit``, which the synthesis loop calls on the event loop thread, so the engine cannot wait for
    the store there (``run_coroutine_threadsafe`` onto that same loop would deadlock, and a blocking fetch
    would stall every job). Instead the worker resolves a group's voices in its async admission step
    (:meth:`resolve`, awaited by ``Synthesizer.admit``) before the jobs reach the engine; the engine's
    ``submit`` then only reads memory (:meth:`lookup`). The CPU/GPU-bound encoding runs in a thread
    (``asyncio.to_thread``), so the loop keeps serving while a new voice is encoded.

    On first use of a voice: fetch ``meta.json`` (absent: :class:`VoiceNotFound`) and
    ``codes-<fingerprint>.npy``; when the codes are absent (or unreadable), fetch ``reference.wav``,
    encode it and write the codes back, so the next worker (or restart) reads them. Concurrent first
    uses of one voice share one fetch. Entries are LRU-bounded by ``size``; an entry older than
    ``ttl_s`` is re-checked against the store (``meta.json``) on its next admission, so a deleted voice
    is served for at most ``ttl_s`` after its last check. An entry evicted between admission and
    ``submit`` (more distinct voices in flight than ``size``) fails its job with ``voice_not_found``:
    keep ``size`` above the distinct registered voices a worker has in flight.
    """

    def __init__(self, store: Any, encoder: ClipEncoder, num_codebooks: int, *, size: int = 64,
                 ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1:
            raise ValueError("the voice cache needs room for at least one voice")
        if ttl_s < 0:
            raise ValueError("the voice TTL cannot be negative")
        self.store = store
        self.encoder = encoder
        self.num_codebooks = num_codebooks
        self.size = size
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: OrderedDict[str, StoredVoice] = OrderedDict()
        self._lock = threading.Lock()  # lookup() runs on the engine's side, resolve() on the loop
        self._inflight: dict[str, asyncio.Future[StoredVoice]] = {}
        self.hits = self.fetches = self.encodes = self.rechecks = 0

    def lookup(self, voice_id: str) -> StoredVoice | None:
        with self._lock:
            item = self._cache.get(voice_id)
            if item is not None:
                self._cache.move_to_end(voice_id)
            return item

    def forget(self, voice_id: str) -> None:
        with self._lock:
            self._cache.pop(voice_id, None)

    async def resolve(self, voice_id: str) -> StoredVoice:
        """The voice, from memory when checked within the TTL, else from the store (raises UnknownVoice)."""
        if not VOICE_ID.match(voice_id):
            raise VoiceNotFound(f"voice {voice_id!r} is not a registered voice id (vc_ + 24 lowercase hex)")
        item = self.lookup(voice_id)
        if item is not None and self.clock() - item.checked_at < self.ttl_s:
            self.hits += 1
            return item
        running = self._inflight.get(voice_id)
        if running is not None:
            return await asyncio.shield(running)
        fut: asyncio.Future[StoredVoice] = asyncio.get_running_loop().create_future()
        self._inflight[voice_id] = fut
        try:
            item = await self._load(voice_id, item)
            fut.set_result(item)
            return item
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._inflight[voice_id]

    async def _get(self, voice_id: str, name: str) -> bytes | None:
        from voicenote.errors import AudioNotFound

        try:
            data: bytes = await self.store.get(voice_key(voice_id, name))
            return data
        except AudioNotFound:
            return None
        except Exception as e:  # noqa: BLE001 - a store failure fails the job with a clear code, not the worker
            raise VoiceUnusable(f"voice {voice_id}: reading {name} from the audio store failed: {e}") from e

    async def _load(self, voice_id: str, known: StoredVoice | None) -> StoredVoice:
        meta_bytes = await self._get(voice_id, "meta.json")
        if meta_bytes is None:
            self.forget(voice_id)
            raise VoiceNotFound(f"voice {voice_id} does not exist (no meta.json in the audio store)")
        if known is not None:  # a voice never changes, it is only deleted: still there, still good
            self.rechecks += 1
            known.checked_at = self.clock()
            return known
        text = self._transcript(voice_id, meta_bytes)
        self.fetches += 1
        fingerprint = await asyncio.to_thread(self.encoder.fingerprint)
        codes = self._codes(voice_id, await self._get(voice_id, codes_name(fingerprint)))
        source = "stored codes"
        if codes is None:
            source = "encoded from reference.wav"
            wav = await self._get(voice_id, "reference.wav")
            if wav is None:
                raise VoiceNotFound(f"voice {voice_id} has no reference.wav in the audio store")
            try:
                samples = read_wav(wav)
            except ValueError as e:
                raise VoiceUnusable(f"voice {voice_id}: reference.wav: {e}") from e
            codes = np.asarray(await asyncio.to_thread(self.encoder.encode, samples), dtype=np.int64)
            self.encodes += 1
            try:
                await self.store.put(voice_key(voice_id, codes_name(fingerprint)), npy_bytes(codes),
                                     "application/octet-stream")
            except Exception as e:  # noqa: BLE001 - the codes are in hand: serve them, encode again next time
                log.warning("voice %s: writing its codes back to the audio store failed: %s", voice_id, e)
        log.info("voice %s: %d reference frames (%s) and a transcript of %d characters, ready for prompts",
                 voice_id, codes.shape[1], source, len(text))
        item = StoredVoice(text, codes, self.clock())
        with self._lock:
            self._cache[voice_id] = item
            self._cache.move_to_end(voice_id)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return item

    @staticmethod
    def _transcript(voice_id: str, data: bytes) -> str:
        try:
            meta = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise VoiceUnusable(f"voice {voice_id}: meta.json is not UTF-8 JSON: {e}") from e
        if not isinstance(meta, dict) or not isinstance(meta.get("transcript"), str):
            raise VoiceUnusable(f"voice {voice_id}: meta.json has no transcript string")
        if meta.get("voice_id", voice_id) != voice_id:
            raise VoiceUnusable(f"voice {voice_id}: meta.json names another voice, {meta.get('voice_id')!r}")
        if meta.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise VoiceUnusable(f"voice {voice_id}: meta.json sample_rate {meta.get('sample_rate')!r}, expected {SAMPLE_RATE}")
        return meta["transcript"].strip()

    def _codes(self, voice_id: str, data: bytes | None) -> np.ndarray | None:
        """Stored codes, or None when absent or unusable (then they are encoded again and overwritten)."""
        import io

        if data is None:
            return None
        try:
            codes = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError) as e:
            log.warning("voice %s: stored codes are unreadable (%s); encoding again", voice_id, e)
            return None
        if (codes.ndim != 2 or codes.shape[0] != self.num_codebooks or codes.shape[1] == 0
                or not np.issubdtype(codes.dtype, np.integer) or codes.min() < 0):
            log.warning("voice %s: stored codes %s %s are not (%d, T) non-negative integers; encoding again",
                        voice_id, codes.shape, codes.dtype, self.num_codebooks)
            return None
        return codes.astype(np.int64)
