"""Registered voices: clips decoded and checked, stored with their owner, listed, read and deleted by them.

The storage layout and the clip checks are voicenote/registered_voices.py's (the contract with the workers,
docs/voices.md). Another key's voice answers exactly as a missing one (404), so ids cannot be probed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from typing import Any

from producer_api.auth import Caller
from producer_api.errors import ApiError
from producer_api.models import Reference
from schemas.clock import now_ms
from schemas.validation import bad_characters
from voicenote import registered_voices as rv
from voicenote.errors import AudioNotFound
from voicenote.registered_voices import ClipRejected, VoiceMeta
from voicenote.storage import AudioStore
from voicenote.storage.base import Put

log = logging.getLogger(__name__)

_READ_CONCURRENCY = 16  # meta.json reads at once when listing


def voice_object(meta: VoiceMeta) -> dict[str, Any]:
    """The API's view of a voice (POST's answer, GET's, and the list's items)."""
    return {"id": meta.voice_id, "object": "voice", "name": meta.name, "transcript": meta.transcript,
            "duration_s": meta.duration_s, "created_at": meta.created_at_ms, "ephemeral": meta.ephemeral}


class VoiceRegistry:
    def __init__(self, *, store: AudioStore, ephemeral_ttl_seconds: int) -> None:
        self._store = store
        self.ephemeral_ttl_seconds = ephemeral_ttl_seconds

    async def register(self, caller: Caller, audio: bytes, transcript: str | None, name: str | None = None, *,
                       ephemeral: bool = False, voice_id: str | None = None, param: str = "audio",
                       transcript_param: str = "transcript") -> VoiceMeta:
        """Decode, check and store a clip; 400 with the check's code when it is refused."""
        transcript = _check_transcript(transcript, transcript_param)
        name = (name or "").strip()
        if len(name) > rv.MAX_NAME_CHARS or bad_characters(name) is not None:
            raise ApiError(400, f"name must be at most {rv.MAX_NAME_CHARS} printable characters", param="name", code="invalid_name")
        try:
            clip = await asyncio.to_thread(rv.decode_clip, audio)
        except ClipRejected as exc:
            raise ApiError(400, str(exc), param=param, code=exc.code) from None
        meta = VoiceMeta(voice_id=voice_id or rv.new_voice_id(), owner=caller.name, name=name, transcript=transcript,
                         sample_rate=rv.SAMPLE_RATE, duration_s=clip.duration_s, created_at_ms=now_ms(), ephemeral=ephemeral)
        # The reference first, the meta last: a voice is listed (and found) only once it is whole.
        await self._store.put_many([Put(rv.reference_key(meta.voice_id), clip.wav, "audio/wav", {"owner": caller.name})])
        await self._store.put(rv.meta_key(meta.voice_id), meta.dumps(), "application/json", {"owner": caller.name})
        return meta

    async def register_inline(self, caller: Caller, reference: Reference, where: str = "") -> str:
        """fish-speech's inline ``references`` ([{audio: base64, text}]) stored as an ephemeral voice; its id.

        The id is derived from the caller, the audio and the text, so the same reference (and a retried or
        replayed request) names the same voice: workers encode it once."""
        param = f"{where}references.0.audio"
        try:
            audio = base64.b64decode(reference.audio, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "references[0].audio must be the clip's bytes in standard base64", param=param,
                           code="clip_undecodable") from None
        digest = hashlib.sha256(b"\0".join([caller.name.encode(), (reference.text or "").encode(), audio])).hexdigest()
        meta = await self.register(caller, audio, reference.text, ephemeral=True, voice_id=rv.VOICE_ID_PREFIX + digest[:24],
                                   param=param, transcript_param=f"{where}references.0.text")
        return meta.voice_id

    async def get(self, caller: Caller, voice_id: str) -> VoiceMeta:
        """The caller's voice; 404 when it is missing, malformed or another key's (the same answer)."""
        meta = await self._read(voice_id) if rv.VOICE_ID.match(voice_id) else None
        if meta is None or meta.owner != caller.name:
            raise ApiError(404, f"no voice {voice_id!r} registered with this API key; GET /v1/audio/voices lists yours",
                           param="voice", code="voice_not_found")
        return meta

    async def owned(self, caller: Caller) -> list[VoiceMeta]:
        """The caller's registered voices (not the ephemeral ones), oldest first."""
        keys = await self._store.list_keys(rv.VOICES_PREFIX)
        ids = [key.split("/")[1] for key in keys if key.endswith("/" + rv.META) and key.count("/") == 2]
        semaphore = asyncio.Semaphore(_READ_CONCURRENCY)

        async def read(voice_id: str) -> VoiceMeta | None:
            async with semaphore:
                return await self._read(voice_id)

        metas = await asyncio.gather(*(read(v) for v in ids if rv.VOICE_ID.match(v)))
        mine = [m for m in metas if m is not None and m.owner == caller.name and not m.ephemeral]
        return sorted(mine, key=lambda m: (m.created_at_ms, m.voice_id))

    async def delete(self, caller: Caller, voice_id: str) -> VoiceMeta:
        meta = await self.get(caller, voice_id)
        await self._purge(voice_id)
        return meta

    async def sweep_ephemeral(self, now: int | None = None) -> list[str]:
        """Delete the ephemeral voices older than the TTL (every key of each); their ids."""
        cutoff = (now_ms() if now is None else now) - self.ephemeral_ttl_seconds * 1000
        keys = await self._store.list_keys(rv.VOICES_PREFIX)
        swept = []
        for voice_id in sorted({key.split("/")[1] for key in keys if key.count("/") == 2}):
            if not rv.VOICE_ID.match(voice_id):
                continue
            meta = await self._read(voice_id)
            if meta is not None and meta.ephemeral and meta.created_at_ms < cutoff:
                await self._purge(voice_id)
                swept.append(voice_id)
        return swept

    async def _purge(self, voice_id: str) -> None:
        # meta.json first: from then on the voice is not found, even if a later delete fails.
        await self._store.delete_many([rv.meta_key(voice_id)])
        await self._store.delete_many(await self._store.list_keys(rv.voice_prefix(voice_id)))

    async def _read(self, voice_id: str) -> VoiceMeta | None:
        try:
            return VoiceMeta.loads(await self._store.get(rv.meta_key(voice_id)))
        except AudioNotFound:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("voice %s has an unreadable meta.json: %s", voice_id, exc)
            return None


async def sweep_forever(voices: VoiceRegistry, interval_seconds: float) -> None:
    """Each API process sweeps the expired ephemeral voices now and then (deletes are idempotent: several may)."""
    while True:
        try:
            swept = await voices.sweep_ephemeral()
            if swept:
                log.info("deleted %d expired ephemeral voices", len(swept))
        except Exception as exc:  # noqa: BLE001 - the storage may be down for a while; the next round retries
            log.warning("ephemeral voice sweep failed: %s", exc)
        await asyncio.sleep(interval_seconds)


def _check_transcript(transcript: str | None, param: str) -> str:
    if transcript is None or not str(transcript).strip():
        raise ApiError(400, "the transcript is missing: send what the clip says, word for word (the model learns the voice "
                            "from the clip and its text together)", param=param, code="transcript_missing")
    transcript = str(transcript).strip()
    if len(transcript) > rv.MAX_TRANSCRIPT_CHARS:
        raise ApiError(400, f"the transcript is longer than {rv.MAX_TRANSCRIPT_CHARS} characters; a 3-30 s clip says less",
                       param=param, code="transcript_too_long")
    if (bad := bad_characters(transcript)) is not None:
        raise ApiError(400, f"transcript {bad}", param=param, code="invalid_characters")
    return transcript
