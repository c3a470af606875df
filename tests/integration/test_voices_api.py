"""Voice registration (docs/voices.md) through the real API app, on the S3 server of the fixtures, the real broker
and Redis: a clip of real speech (espeak-ng) registered, checked, listed per key, deleted, and named by requests."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import time
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from confluent_kafka import Consumer

from producer_api.auth import hash_token
from schemas.codec import Codecs
from schemas.topics import build_catalog
from tests.integration.conftest import WRITER, running_api
from voicenote import registered_voices as rv
from voicenote.audio import encode
from voicenote.kafka import client_config
from voicenote.settings import ApiKey, ApiSettings, Settings, StorageBackend
from voicenote.storage import AudioStore, build_store

pytestmark = pytest.mark.integration

OTHER = "vn-test-other-writer-token"
TRANSCRIPT = "Hello, this is a short recording of my voice, made for the voice registration test."


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """About 6 s of real speech, mono 22,050 Hz 16-bit (espeak-ng's output)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)")
    out = tmp_path_factory.mktemp("clip") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(out), TRANSCRIPT], check=True, timeout=60)
    return out.read_bytes()


def _samples(wav: bytes) -> tuple[np.ndarray, int, int]:
    with wave.open(io.BytesIO(wav), "rb") as w:
        assert w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate(), w.getnchannels()


def _wav(samples: np.ndarray, rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def _stereo(wav: bytes) -> bytes:
    mono, rate, _ = _samples(wav)
    return _wav(np.repeat(mono, 2), rate, channels=2)  # interleaved L R


def _seconds(wav: bytes, seconds: float) -> bytes:
    """The clip cut to, or repeated up to, ``seconds``."""
    mono, rate, _ = _samples(wav)
    n = int(seconds * rate)
    return _wav(np.resize(mono, n), rate)


@pytest.fixture
def s3_settings(settings: Settings) -> Settings:
    keys = [ApiKey(name="writer", sha256=hash_token(WRITER)), ApiKey(name="other", sha256=hash_token(OTHER))]
    return settings.model_copy(update={"api": ApiSettings(keys=keys),
                                       "storage": settings.storage.model_copy(update={"backend": StorageBackend.s3})})


@pytest.fixture
async def store(s3_settings: Settings) -> AsyncIterator[AudioStore]:
    s = build_store(s3_settings.storage)
    await s.provision()  # the bucket (voicenote run and the workers provision it; the API does not)
    try:
        yield s
    finally:
        await s.close()


@asynccontextmanager
async def two_keys(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with running_api(settings, WRITER) as writer:
        transport = httpx.ASGITransport(app=writer.app)  # type: ignore[attr-defined]
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=60,
                                     headers={"Authorization": f"Bearer {OTHER}"}) as other:
            yield writer, other


async def _register(api: httpx.AsyncClient, clip: bytes, filename: str = "clip.wav", **form: str) -> httpx.Response:
    data = {"transcript": TRANSCRIPT, **form}
    return await api.post("/v1/audio/voices", files={"audio": (filename, clip)}, data=data)


def _s1mini_requests(settings: Settings, expect: int, timeout: float = 20) -> list[dict[str, Any]]:
    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=settings.kafka.request_partitions,
                            partitions=settings.kafka.partitions)
    consumer = Consumer({**client_config(settings.kafka), "group.id": f"{settings.worker.group_id}-voices",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 2000, "heartbeat.interval.ms": 500})
    consumer.subscribe([catalog.requests_for("s1mini").name])
    codecs, found = Codecs(), []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(found) < expect:
        msg = consumer.poll(0.3)
        if msg is not None and msg.error() is None:
            found.append(codecs.request.decode(msg.value()))
    consumer.close()
    return found


async def test_a_registered_clip_is_stored_as_44k1_mono_wav_with_its_meta(s3_settings: Settings, store: AudioStore,
                                                                         speech_wav: bytes) -> None:
    source, source_rate, _ = _samples(speech_wav)
    async with running_api(s3_settings) as api:
        resp = await _register(api, _stereo(speech_wav), name="Ada")
        assert resp.status_code == 201, resp.text
        body = resp.json()
        # An ogg (Opus, 48 kHz) clip is resampled the same way.
        ogg = await _register(api, encode(speech_wav, "opus"), filename="clip.ogg")
        assert ogg.status_code == 201, ogg.text
    assert rv.VOICE_ID.match(body["id"]) and body["object"] == "voice"
    assert body["name"] == "Ada" and body["transcript"] == TRANSCRIPT and body["ephemeral"] is False
    assert body["duration_s"] == pytest.approx(len(source) / source_rate, abs=0.05)
    assert abs(body["created_at"] - time.time() * 1000) < 60_000

    stored, rate, channels = _samples(await store.get(f"voices/{body['id']}/reference.wav"))
    assert (rate, channels) == (44_100, 1)
    assert len(stored) / rate == pytest.approx(body["duration_s"], abs=0.01)
    # The downmix of two equal channels is the speech itself: same loudness (RMS) as the source.
    rms = [float(np.sqrt(np.mean((x.astype(np.float64) / 32768) ** 2))) for x in (source, stored)]
    assert rms[1] == pytest.approx(rms[0], rel=0.05)
    meta = json.loads(await store.get(f"voices/{body['id']}/meta.json"))
    assert meta == {"voice_id": body["id"], "owner": "writer", "name": "Ada", "transcript": TRANSCRIPT, "sample_rate": 44100,
                    "duration_s": body["duration_s"], "created_at_ms": body["created_at"], "ephemeral": False}
    assert _samples(await store.get(f"voices/{ogg.json()['id']}/reference.wav"))[1:] == (44_100, 1)


@pytest.mark.parametrize(("case", "code"), [
    ("too_short", "clip_too_short"), ("too_long", "clip_too_long"), ("silent", "clip_silent"),
    ("undecodable", "clip_undecodable"), ("too_big", "clip_too_large"), ("no_transcript", "transcript_missing"),
    ("no_audio", "clip_missing"), ("not_audio_format", "clip_format_unsupported"),
])
async def test_a_bad_clip_gets_a_400_that_says_why_and_stores_nothing(s3_settings: Settings, store: AudioStore,
                                                                      speech_wav: bytes, case: str, code: str) -> None:
    rate = _samples(speech_wav)[1]
    files: dict[str, Any] = {"audio": ("clip.wav", {
        "too_short": _seconds(speech_wav, 2.0),
        "too_long": _seconds(speech_wav, 31.0),
        "silent": _wav(np.zeros(5 * rate), rate),
        "undecodable": b"RIFF\x00\x00\x00\x00WAVEnot really a wav file at all" * 10,
        "too_big": _wav(np.resize(_samples(speech_wav)[0], 6 * 1_048_576), rate),  # 12 MiB, over the 10 MiB limit
        "no_transcript": speech_wav, "no_audio": speech_wav,
        # A PNG's bytes: FFmpeg can read it, but it is no clip format.
        "not_audio_format": base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="),
    }[case])}
    data = {"transcript": TRANSCRIPT}
    if case == "no_transcript":
        data = {"transcript": "   "}
    if case == "no_audio":
        files = {"other": ("x.txt", b"x")}
    async with running_api(s3_settings) as api:
        resp = await api.post("/v1/audio/voices", files=files, data=data)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == code, error
    assert error["param"] in ("audio", "transcript")
    assert len(error["message"]) > 20  # says what to fix, not only the code
    assert await store.list_keys("voices/") == []


async def test_voices_are_listed_read_and_deleted_by_their_own_key_only(s3_settings: Settings, store: AudioStore,
                                                                        speech_wav: bytes) -> None:
    async with two_keys(s3_settings) as (writer, other):
        mine = (await _register(writer, speech_wav, name="mine")).json()["id"]
        theirs = (await _register(other, speech_wav, name="theirs")).json()["id"]

        listing = (await writer.get("/v1/audio/voices")).json()
        assert [v["id"] for v in listing["registered"]] == [mine]
        assert listing["registered"][0]["name"] == "mine"
        assert mine in listing["voices"] and theirs not in listing["voices"]
        by_model = {m["model"]: m for m in listing["data"]}
        assert mine in [v["id"] for v in by_model["s1-mini"]["voices"]] and by_model["s1-mini"]["voice_names"][mine] == mine
        assert mine not in [v["id"] for v in by_model["tts-1"]["voices"]]  # registered voices are S1-mini's only
        assert "alloy" in listing["voices"]  # the built-ins stay
        piper_only = (await writer.get("/v1/audio/voices", params={"model": "tts-1"})).json()
        assert not [v for v in piper_only["voices"] if v.startswith("vc_")] and piper_only["registered"][0]["id"] == mine
        assert [v["id"] for v in (await other.get("/v1/audio/voices")).json()["registered"]] == [theirs]

        assert (await writer.get(f"/v1/audio/voices/{mine}")).json()["transcript"] == TRANSCRIPT
        for call in (other.get, other.delete):  # another key's voice: the same 404 as a missing one
            resp = await call(f"/v1/audio/voices/{mine}")
            assert resp.status_code == 404 and resp.json()["error"]["code"] == "voice_not_found"
        missing = await writer.get("/v1/audio/voices/vc_000000000000000000000000")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "voice_not_found"
        assert (await writer.get("/v1/audio/voices/not-a-voice")).status_code == 404

        # A worker's cached codes live under the voice too (docs/voices.md): deleting the voice deletes them.
        await store.put(f"voices/{mine}/codes-0123456789abcdef.npy", b"codes", "application/octet-stream")
        deleted = await writer.delete(f"/v1/audio/voices/{mine}")
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
        assert await store.list_keys(f"voices/{mine}/") == []
        assert (await writer.get(f"/v1/audio/voices/{mine}")).status_code == 404
        assert (await writer.delete(f"/v1/audio/voices/{mine}")).status_code == 404
        assert (await writer.get("/v1/audio/voices")).json()["registered"] == []
        assert len(await store.list_keys(f"voices/{theirs}/")) == 2  # the other key's voice is untouched


async def test_requests_naming_a_voice_are_checked_for_owner_and_model(s3_settings: Settings, store: AudioStore,
                                                                       speech_wav: bytes) -> None:
    speech = {"model": "s1-mini", "input": "Hello there.", "response_format": "wav"}
    async with two_keys(s3_settings) as (writer, other):
        mine = (await _register(writer, speech_wav)).json()["id"]
        theirs = (await _register(other, speech_wav)).json()["id"]
        for path, body in [("/v1/audio/speech", {**speech, "voice": theirs, "stream_format": "none"}),
                           ("/v1/audio/speech", {**speech, "voice": theirs}),  # the streaming answer checks it too
                           ("/v1/audio/speech/async", {**speech, "voice": theirs}),
                           ("/v1/audio/speech/async", {**speech, "voice": "vc_000000000000000000000000"}),
                           ("/v1/audio/speech/batch", {"requests": [{**speech, "voice": mine}, {**speech, "voice": theirs}]})]:
            resp = await writer.post(path, json=body)
            assert resp.status_code == 404, (path, resp.text)
            assert resp.json()["error"]["code"] == "voice_not_found"
        batch_error = (await writer.post("/v1/audio/speech/batch", json={"requests": [{**speech, "voice": theirs}]})).json()
        assert batch_error["error"]["param"] == "requests.0.voice"
        for path in ("/v1/audio/speech", "/v1/audio/speech/async"):
            resp = await writer.post(path, json={**speech, "model": "tts-1", "voice": mine})
            assert resp.status_code == 400 and resp.json()["error"]["code"] == "voice_model_mismatch", resp.text
            assert "s1-mini" in resp.json()["error"]["message"]
        accepted = await writer.post("/v1/audio/speech/async", json={**speech, "voice": mine})
        assert accepted.status_code == 202, accepted.text
    [event] = _s1mini_requests(s3_settings, 1)
    assert event["job_id"] == accepted.json()["job_id"] and event["voice"] == mine and event["model"] == "s1-mini"


async def test_inline_references_become_an_ephemeral_voice_of_the_caller(s3_settings: Settings, store: AudioStore,
                                                                         speech_wav: bytes) -> None:
    reference = {"audio": base64.b64encode(speech_wav).decode(), "text": TRANSCRIPT}
    speech = {"model": "s1-mini", "input": "Hello there.", "voice": "alloy", "response_format": "wav"}
    async with running_api(s3_settings) as api:
        accepted = [await api.post("/v1/audio/speech/async", json={**speech, "references": [reference]}) for _ in range(2)]
        assert [a.status_code for a in accepted] == [202, 202], accepted[0].text
        empty = await api.post("/v1/audio/speech/async", json={**speech, "references": []})
        assert empty.status_code == 202  # the same as none
        too_many = await api.post("/v1/audio/speech/async", json={**speech, "references": [reference, reference]})
        assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_references"
        piper = await api.post("/v1/audio/speech/async", json={**speech, "model": "tts-1", "references": [reference]})
        assert piper.status_code == 400 and piper.json()["error"]["code"] == "voice_model_mismatch"
        silent = {"audio": base64.b64encode(_wav(np.zeros(5 * 22050), 22050)).decode(), "text": TRANSCRIPT}
        refused = await api.post("/v1/audio/speech/async", json={**speech, "references": [silent]})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "clip_silent"
        assert refused.json()["error"]["param"] == "references.0.audio"
        untold = await api.post("/v1/audio/speech/async", json={**speech, "references": [{"audio": reference["audio"]}]})
        assert untold.status_code == 400 and untold.json()["error"]["code"] == "transcript_missing"
        listed = (await api.get("/v1/audio/voices")).json()["registered"]
        by_job = {e["job_id"]: e for e in _s1mini_requests(s3_settings, 3)}
        voice = by_job[accepted[0].json()["job_id"]]["voice"]
        assert rv.VOICE_ID.match(voice) and by_job[accepted[1].json()["job_id"]]["voice"] == voice  # same reference, same voice
        assert by_job[empty.json()["job_id"]]["voice"] == "default"  # references: [] is no reference
        meta = json.loads(await store.get(f"voices/{voice}/meta.json"))
        assert meta["ephemeral"] is True and meta["owner"] == "writer" and meta["transcript"] == TRANSCRIPT
        assert _samples(await store.get(f"voices/{voice}/reference.wav"))[1:] == (44_100, 1)
        assert listed == []  # ephemeral voices are not listed
        registry = api.app.state.services.voices  # type: ignore[attr-defined]
        assert await registry.sweep_ephemeral() == []  # younger than the TTL
        kept = (await _register(api, speech_wav)).json()["id"]
        later = int(time.time() * 1000) + (s3_settings.api.ephemeral_voice_ttl_seconds + 60) * 1000
        assert await registry.sweep_ephemeral(now=later) == [voice]
        assert await store.list_keys(f"voices/{voice}/") == []
        assert (await api.get(f"/v1/audio/voices/{kept}")).status_code == 200  # registered voices are never swept


async def test_the_local_store_keeps_voices_the_same_way(settings: Settings, speech_wav: bytes, tmp_path: Path) -> None:
    keys = [ApiKey(name="writer", sha256=hash_token(WRITER))]
    local = settings.model_copy(update={"api": ApiSettings(keys=keys)})
    async with running_api(local) as api:
        voice = (await _register(api, speech_wav)).json()["id"]
        assert (local.storage.local_dir / "voices" / voice / "reference.wav").is_file()
        assert [v["id"] for v in (await api.get("/v1/audio/voices")).json()["registered"]] == [voice]
        assert (await api.delete(f"/v1/audio/voices/{voice}")).status_code == 200
    assert not (local.storage.local_dir / "voices" / voice).exists()


async def test_an_oversized_upload_without_a_length_is_refused_once_past_the_limit(s3_settings: Settings,
                                                                                   store: AudioStore) -> None:
    limit = 64 * 1024
    settings = s3_settings.model_copy(update={"api": s3_settings.api.model_copy(update={"voice_upload_max_bytes": limit})})
    sent = 0

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the middleware counts what arrives
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="audio"; filename="big.wav"\r\n\r\n'
        for _ in range(64):  # 4 MiB on offer
            sent += 65536
            yield b"\0" * 65536

    async with running_api(settings) as api:
        resp = await api.post("/v1/audio/voices", content=chunked(),
                              headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "clip_too_large", resp.text
    assert str(limit) in resp.json()["error"]["message"]
    assert sent < 4 * 1_048_576  # stopped reading soon after the limit, not at the end of the body
    assert await store.list_keys("voices/") == []
