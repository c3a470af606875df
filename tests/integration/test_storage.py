"""Audio storage against moto's S3 server (and the local backend): keys, types, presigned URLs,
redelivery, multipart, lifecycle."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from schemas.events import SynthesisResult
from stream_workers.completion.storage import Storer
from voicenote.audio import to_wav
from voicenote.errors import AudioNotFound
from voicenote.settings import Settings, StorageBackend
from voicenote.storage.local import LocalAudioStore
from voicenote.storage.s3 import S3AudioStore

pytestmark = pytest.mark.integration

MiB = 1_048_576


@pytest.fixture
async def s3(settings: Settings) -> AsyncIterator[S3AudioStore]:
    storage = settings.storage.model_copy(update={"backend": StorageBackend.s3, "multipart_threshold_bytes": 5 * MiB,
                                                  "multipart_part_bytes": 5 * MiB})
    store = S3AudioStore(storage)
    await store.provision()
    try:
        yield store
    finally:
        await store.close()


def _result(job_id: str, seconds: float = 0.5) -> SynthesisResult:
    tone = (0.2 * np.sin(np.linspace(0, 2 * np.pi * 440 * seconds, int(22050 * seconds)))).astype(np.float32)
    now = int(time.time() * 1000)
    return SynthesisResult(job_id=job_id, status="succeeded", created_at=now, synthesized_at=now,
                           format="wav", audio=to_wav(tone, 22050), audio_ref=None, engine="null", model_version="tone-1",
                           batch_size=1, queued_ms=3, batch_wait_ms=2, engine_ms=5)


async def _keys(store: S3AudioStore) -> list[str]:
    s3 = await store._s3()
    listing = await s3.list_objects_v2(Bucket=store.bucket)
    return [o["Key"] for o in listing.get("Contents", [])]


async def test_completion_stores_typed_object_and_presigned_url_fetches_it(s3: S3AudioStore, settings: Settings) -> None:
    storer = Storer(s3, s3._settings, public_base_url="http://api.invalid")
    result = _result("job_s3typed01")
    completion = await storer.complete(result)

    assert completion.status == "succeeded"
    assert completion.audio_key == "audio/01/job_s3typed01.wav"
    head = await s3.head(completion.audio_key)
    assert head["ContentType"] == "audio/wav"
    assert head["ContentLength"] == len(result.audio)
    assert head["Metadata"] == {"job-id": "job_s3typed01", "engine": "null", "model-version": "tone-1", "format": "wav"}
    assert completion.duration_ms == 500 and completion.sample_rate == 22050

    url = completion.audio_url
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=3600" in url  # SigV4, configured expiry
    fetched = httpx.get(url, timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == result.audio


async def test_redelivered_result_overwrites_the_same_object(s3: S3AudioStore) -> None:
    storer = Storer(s3, s3._settings)
    result = _result("job_redeliver7")
    first = await storer.complete(result)
    second = await storer.complete(replace(result))
    assert first.audio_key == second.audio_key
    assert await _keys(s3) == [first.audio_key]
    assert await s3.get(first.audio_key) == result.audio


async def test_large_audio_goes_multipart(s3: S3AudioStore) -> None:
    data = os.urandom(11 * MiB + 123)
    stored = await s3.put("audio/xx/job_bigmultipart.wav", data, "audio/wav", {"job-id": "job_bigmultipart"})
    head = await s3.head(stored.key)
    # A multipart object's ETag is "<md5 of part md5s>-<part count>": 5 + 5 + 1 MiB parts.
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentType"] == "audio/wav"
    assert head["Metadata"] == {"job-id": "job_bigmultipart"}
    assert await s3.get(stored.key) == data


async def test_small_audio_is_a_single_put(s3: S3AudioStore) -> None:
    stored = await s3.put("audio/xx/job_smallput.wav", b"RIFF" + b"\0" * 100, "audio/wav")
    assert "-" not in (await s3.head(stored.key))["ETag"]


async def test_provisioning_applies_the_lifecycle_rule(s3: S3AudioStore) -> None:
    s3_client = await s3._s3()
    rules = (await s3_client.get_bucket_lifecycle_configuration(Bucket=s3.bucket))["Rules"]
    assert len(rules) == 1
    assert rules[0]["Status"] == "Enabled"
    assert rules[0]["Expiration"]["Days"] == s3._settings.lifecycle_days
    assert rules[0]["Filter"]["Prefix"] == s3._settings.key_prefix
    await s3.provision()  # idempotent
    assert len((await s3_client.get_bucket_lifecycle_configuration(Bucket=s3.bucket))["Rules"]) == 1


async def test_provisioning_keeps_the_rules_others_put_on_a_shared_bucket(s3: S3AudioStore) -> None:
    s3_client = await s3._s3()
    theirs = {"ID": "logs-expire", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 30}}
    current = (await s3_client.get_bucket_lifecycle_configuration(Bucket=s3.bucket))["Rules"]
    await s3_client.put_bucket_lifecycle_configuration(Bucket=s3.bucket, LifecycleConfiguration={"Rules": [*current, theirs]})
    s3._settings.lifecycle_days = 3  # a changed TTL replaces our rule, not theirs
    await s3.provision()
    rules = {r["ID"]: r for r in (await s3_client.get_bucket_lifecycle_configuration(Bucket=s3.bucket))["Rules"]}
    assert set(rules) == {"logs-expire", "voicenote-audio-ttl"}
    assert rules["logs-expire"]["Filter"]["Prefix"] == "logs/"
    assert rules["voicenote-audio-ttl"]["Expiration"]["Days"] == 3


async def test_a_bucket_outside_us_east_1_is_created_in_its_region(settings: Settings) -> None:
    storage = settings.storage.model_copy(update={"backend": StorageBackend.s3, "s3_region": "eu-west-1",
                                                  "s3_bucket": settings.storage.s3_bucket + "-eu"})
    store = S3AudioStore(storage)
    try:
        await store.provision()
        client = await store._s3()
        location = await client.get_bucket_location(Bucket=store.bucket)
        assert location["LocationConstraint"] == "eu-west-1"
        stored = await store.put("audio/eu/job_region.wav", b"RIFF" + b"\0" * 10, "audio/wav")
        assert await store.get(stored.key) == b"RIFF" + b"\0" * 10
    finally:
        await store.close()


async def test_missing_object_is_audio_not_found(s3: S3AudioStore) -> None:
    with pytest.raises(AudioNotFound):
        await s3.get("audio/zz/job_never.wav")


async def test_local_store_serves_api_url_and_expires_like_the_lifecycle(tmp_path: Path) -> None:
    store = LocalAudioStore(tmp_path / "audio", ttl_seconds=3600)
    storer = Storer(store, Settings().storage, public_base_url="http://127.0.0.1:8000/")
    completion = await storer.complete(_result("job_localexp1"))
    assert completion.audio_url == "http://127.0.0.1:8000/v1/jobs/job_localexp1/audio"
    key = completion.audio_key
    assert await store.get(key)

    path = tmp_path / "audio" / key
    old = time.time() - 7200
    os.utime(path, (old, old))
    with pytest.raises(AudioNotFound):
        await store.get(key)
    assert not path.exists()

    fresh = await store.put("audio/aa/job_fresh.wav", b"x", "audio/wav")
    stale = await store.put("audio/bb/job_stale.wav", b"y", "audio/wav")
    os.utime(tmp_path / "audio" / stale.key, (old, old))
    assert await store.expire() == [stale.key]
    assert await store.get(fresh.key) == b"x"


async def test_local_store_expires_only_under_its_ttl_prefix_as_the_lifecycle_rule(tmp_path: Path) -> None:
    # build_store passes storage.key_prefix: registered voices (voices/, outside it) never expire.
    store = LocalAudioStore(tmp_path / "audio", ttl_seconds=3600, ttl_prefix="audio/")
    audio = await store.put("audio/aa/job_old.wav", b"a", "audio/wav")
    voice = await store.put("voices/vc_0123456789abcdef01234567/meta.json", b"{}", "application/json")
    old = time.time() - 7200
    for key in (audio.key, voice.key):
        os.utime(tmp_path / "audio" / key, (old, old))
    assert await store.expire() == [audio.key]
    assert await store.get(voice.key) == b"{}"
    assert await store.list_keys("voices/") == [voice.key]


async def test_s3_client_retries_with_adaptive_backoff(s3: S3AudioStore) -> None:
    # Throttling (SlowDown, 503) and 5xx are retried by botocore's adaptive mode, which also rate-limits the client.
    client = await s3._s3()
    assert client.meta.config.retries == {"total_max_attempts": s3._settings.s3_max_attempts, "mode": "adaptive"}
    assert client.meta.config.signature_version == "s3v4"


async def test_cache_hit_whose_audio_expired_fails_with_a_code(tmp_path: Path) -> None:
    store = LocalAudioStore(tmp_path / "audio")
    storer = Storer(store, Settings().storage)
    result = replace(_result("job_cachegone"), audio=None, audio_ref="audio/zz/job_expiredsrc.wav", cache_hit=True)
    completion = await storer.complete(result)
    assert completion.status == "failed"
    assert completion.error_code == "audio_missing"
    assert "submit the request again" in completion.error_message


async def test_a_group_of_results_is_stored_in_one_call_with_failures_kept_apart(s3: S3AudioStore, settings: Settings) -> None:
    storer = Storer(s3, settings.storage)
    failed = replace(_result("job_grpfail"), status="failed", audio=None, error_code="engine_error", error_message="boom")
    group = [_result("job_grp1"), failed, replace(_result("job_grp2"), format="flac")]
    done = await storer.complete_many(group)
    assert [c.job_id for c in done] == ["job_grp1", "job_grpfail", "job_grp2"]  # in order
    assert [c.status for c in done] == ["succeeded", "failed", "succeeded"]
    assert done[1].error_code == "engine_error" and done[1].audio_key is None
    assert done[2].content_type == "audio/flac" and done[2].audio_key.endswith("job_grp2.flac")
    assert sorted(await _keys(s3)) == sorted([done[0].audio_key, done[2].audio_key])
    assert await s3.get(done[0].audio_key) == group[0].audio


async def test_local_put_many_writes_every_file_and_refuses_keys_outside_the_root(tmp_path: Path) -> None:
    from voicenote.errors import StorageError
    from voicenote.storage.base import Put

    store = LocalAudioStore(tmp_path / "audio")
    stored = await store.put_many([Put("audio/aa/job_1.wav", b"one", "audio/wav"), Put("audio/bb/job_2.wav", b"two", "audio/wav"),
                                   Put("audio/aa/job_3.wav", b"three", "audio/wav")])
    assert [await store.get(s.key) for s in stored] == [b"one", b"two", b"three"]
    assert not list((tmp_path / "audio").rglob(".*.tmp"))  # written through a temporary file, renamed
    for key in ("../outside.wav", "audio/../../outside.wav", "/etc/outside.wav"):
        with pytest.raises(StorageError, match="escapes"):
            await store.put(key, b"x", "audio/wav")
    assert not (tmp_path / "outside.wav").exists()
