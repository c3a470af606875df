"""One contract, every AudioStore: the same cases run against the local store and S3 (moto's server).

A new backend joins by adding its name to the ``store`` fixture. Backend-specific behaviour (multipart,
lifecycle rules, presigned signatures, local expiry) stays in test_storage.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pytest

from voicenote.errors import AudioNotFound
from voicenote.settings import Settings, StorageBackend
from voicenote.storage import AudioStore, build_store
from voicenote.storage.base import Put

pytestmark = pytest.mark.integration

SCHEMES = {StorageBackend.local: "file://", StorageBackend.s3: "s3://"}


@pytest.fixture(params=[StorageBackend.local, StorageBackend.s3], ids=lambda b: b.value)
async def store(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[AudioStore]:
    backend: StorageBackend = request.param
    s = build_store(settings.storage.model_copy(update={"backend": backend}))
    await s.provision()
    await s.provision()  # idempotent: every worker provisions at start-up
    try:
        yield s
    finally:
        await s.close()


def _backend(store: AudioStore) -> StorageBackend:
    return StorageBackend.s3 if type(store).__name__ == "S3AudioStore" else StorageBackend.local


async def test_put_then_get_returns_the_bytes_and_says_where_they_went(store: AudioStore) -> None:
    data = os.urandom(4096)
    stored = await store.put("audio/01/job_contract01.wav", data, "audio/wav", {"job-id": "job_contract01"})
    assert stored.key == "audio/01/job_contract01.wav"
    assert stored.size == len(data) and stored.content_type == "audio/wav"
    assert stored.uri.startswith(SCHEMES[_backend(store)]) and stored.uri.endswith(stored.key)
    assert await store.get(stored.key) == data
    assert await store.exists(stored.key)


async def test_a_second_put_overwrites_the_same_key(store: AudioStore) -> None:
    key = "audio/02/job_contract02.mp3"
    await store.put(key, b"first attempt", "audio/mpeg")
    again = await store.put(key, b"redelivered", "audio/mpeg")
    assert again.size == len(b"redelivered")
    assert await store.get(key) == b"redelivered"


async def test_put_many_writes_each_object_and_answers_in_order(store: AudioStore) -> None:
    puts = [Put(f"audio/{i:02d}/job_many{i:02d}.wav", f"audio {i}".encode(), "audio/wav") for i in range(5)]
    stored = await store.put_many(puts)
    assert [s.key for s in stored] == [p.key for p in puts]
    assert [await store.get(p.key) for p in puts] == [p.data for p in puts]
    assert await store.put_many([]) == []


async def test_a_missing_key_is_audio_not_found_and_does_not_exist(store: AudioStore) -> None:
    with pytest.raises(AudioNotFound):
        await store.get("audio/zz/job_nothere.wav")
    assert not await store.exists("audio/zz/job_nothere.wav")


async def test_a_download_url_is_none_or_serves_the_same_bytes(store: AudioStore) -> None:
    data = os.urandom(2048)
    stored = await store.put("audio/03/job_contract03.wav", data, "audio/wav")
    url = await store.url_for(stored.key, 300)
    if _backend(store) is StorageBackend.local:
        assert url is None  # the API serves the bytes itself
        return
    assert url is not None
    async with httpx.AsyncClient(timeout=10) as client:
        fetched = await client.get(url)
    assert fetched.status_code == 200 and fetched.content == data


async def test_a_provisioned_store_answers_its_ping(store: AudioStore) -> None:
    assert await store.ping()


async def test_list_keys_answers_every_key_under_a_prefix_and_no_other(store: AudioStore) -> None:
    mine = ["voices/vc_aa/meta.json", "voices/vc_aa/reference.wav", "voices/vc_aa/sub/codes.npy"]
    others = ["voices/vc_aab/meta.json", "voices/vc_b/meta.json", "audio/aa/job_list01.wav"]
    await store.put_many([Put(k, k.encode(), "application/octet-stream") for k in [*mine, *others]])
    assert await store.list_keys("voices/vc_aa/") == mine
    assert await store.list_keys("voices/vc_aa") == [*mine, "voices/vc_aab/meta.json"]  # a plain string prefix
    assert await store.list_keys("voices/") == sorted([*mine, "voices/vc_aab/meta.json", "voices/vc_b/meta.json"])
    assert await store.list_keys("voices/vc_none/") == []
    assert await store.list_keys("nothing-here/") == []


async def test_delete_many_removes_the_keys_and_leaves_the_rest(store: AudioStore) -> None:
    gone = ["voices/vc_del/meta.json", "voices/vc_del/reference.wav"]
    kept = "voices/vc_keep/meta.json"
    await store.put_many([Put(k, b"x", "application/octet-stream") for k in [*gone, kept]])
    await store.delete_many([*gone, "voices/vc_del/never-written.npy"])  # a missing key is no error
    assert await store.list_keys("voices/vc_del/") == []
    assert not await store.exists(gone[0])
    with pytest.raises(AudioNotFound):
        await store.get(gone[1])
    assert await store.get(kept) == b"x"
    await store.delete_many([])
