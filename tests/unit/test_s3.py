"""The pure parts of S3 storage: where a bucket is created, how our lifecycle rule joins others, which endpoint presigned URLs name."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from voicenote.settings import StorageBackend, StorageSettings
from voicenote.storage.s3 import (
    LIFECYCLE_RULE_ID,
    S3AudioStore,
    audio_lifecycle_rule,
    create_bucket_location,
    merge_lifecycle_rules,
)


def test_us_east_1_takes_no_location_constraint_and_other_regions_need_one() -> None:
    assert create_bucket_location("us-east-1") == {}
    assert create_bucket_location("eu-central-1") == {"CreateBucketConfiguration": {"LocationConstraint": "eu-central-1"}}


def test_our_rule_is_added_beside_others_and_replaces_its_older_self() -> None:
    theirs = {"ID": "logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 30}}
    old = audio_lifecycle_rule("audio/", 7)
    new = audio_lifecycle_rule("audio/", 2)
    merged = merge_lifecycle_rules([theirs, old], new)
    assert merged == [theirs, new]
    assert [r["ID"] for r in merge_lifecycle_rules([], new)] == [LIFECYCLE_RULE_ID]


def _store(**extra: str) -> S3AudioStore:
    return S3AudioStore(StorageSettings(backend=StorageBackend.s3, s3_bucket="voicenote-audio", s3_endpoint_url="http://minio:9000",
                                        s3_access_key_id="minioadmin", s3_secret_access_key="minioadmin", **extra))  # type: ignore[arg-type]


async def test_presigned_urls_name_the_public_endpoint_while_the_services_use_the_internal_one() -> None:
    store = _store(s3_public_endpoint_url="http://localhost:9000")
    try:
        url = await store.url_for("audio/j1.wav", 600)  # signing sends nothing: minio:9000 need not resolve here
        assert url is not None
        parsed = urlsplit(url)
        assert (parsed.scheme, parsed.netloc, parsed.path) == ("http", "localhost:9000", "/voicenote-audio/audio/j1.wav")
        query = parse_qs(parsed.query)
        assert query["X-Amz-SignedHeaders"] == ["host"] and query["X-Amz-Expires"] == ["600"]  # signed for that host
        assert (await store._s3()).meta.endpoint_url == "http://minio:9000"  # uploads and reads stay inside
    finally:
        await store.close()


async def test_without_a_public_endpoint_presigned_urls_name_the_service_endpoint() -> None:
    store = _store()
    try:
        url = await store.url_for("audio/j1.wav", 600)
        assert url is not None and urlsplit(url).netloc == "minio:9000"
    finally:
        await store.close()
