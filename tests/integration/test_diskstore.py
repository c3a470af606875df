"""ops.diskstore, the embedded broker's disk-backed S3, through boto3 and through Tansu itself: the
conditional writes Tansu relies on, listings, ranges, and objects kept across a kill -9."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from ops.bench.common import readable
from ops.embedded import TANSU_BUCKET, tansu_on_s3
from ops.services import DiskS3

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DiskS3]:
    server = DiskS3(root=tmp_path / "objects", log_path=tmp_path / "diskstore.log").start()
    try:
        yield server
    finally:
        server.stop()


def client(server: DiskS3) -> Any:
    return boto3.client("s3", endpoint_url=server.endpoint_url, aws_access_key_id="x", aws_secret_access_key="x",
                        region_name="us-east-1", config=Config(retries={"max_attempts": 1}))


def code_of(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


def test_objects_round_trip_with_type_metadata_and_md5_etag(store: DiskS3) -> None:
    s3 = client(store)
    s3.create_bucket(Bucket="b")
    put = s3.put_object(Bucket="b", Key="a/b c.json", Body=b'{"x": 1}', ContentType="application/json", Metadata={"job-id": "j1"})
    assert put["ETag"] == '"' + __import__("hashlib").md5(b'{"x": 1}').hexdigest() + '"'
    got = s3.get_object(Bucket="b", Key="a/b c.json")
    assert got["Body"].read() == b'{"x": 1}'
    assert got["ContentType"] == "application/json" and got["Metadata"] == {"job-id": "j1"} and got["ETag"] == put["ETag"]
    head = s3.head_object(Bucket="b", Key="a/b c.json")
    assert head["ContentLength"] == 8
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket="b", Key="nope")
    assert code_of(missing.value) == (404, "NoSuchKey")
    with pytest.raises(ClientError) as no_bucket:
        s3.put_object(Bucket="other", Key="k", Body=b"x")
    assert code_of(no_bucket.value) == (404, "NoSuchBucket")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["b"]


def test_conditional_writes_create_once_and_replace_only_the_etag_read(store: DiskS3) -> None:
    s3 = client(store)
    s3.create_bucket(Bucket="b")
    first = s3.put_object(Bucket="b", Key="meta.json", Body=b"v1", IfNoneMatch="*")
    with pytest.raises(ClientError) as exists:
        s3.put_object(Bucket="b", Key="meta.json", Body=b"other", IfNoneMatch="*")
    assert code_of(exists.value) == (412, "PreconditionFailed")
    second = s3.put_object(Bucket="b", Key="meta.json", Body=b"v2", IfMatch=first["ETag"])
    with pytest.raises(ClientError) as stale:
        s3.put_object(Bucket="b", Key="meta.json", Body=b"v3", IfMatch=first["ETag"])  # a writer that read v1
    assert code_of(stale.value) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as absent:
        s3.put_object(Bucket="b", Key="never-written", Body=b"x", IfMatch=second["ETag"])
    assert code_of(absent.value)[0] == 404
    assert s3.get_object(Bucket="b", Key="meta.json")["Body"].read() == b"v2"


def test_racing_creators_of_one_key_get_one_success_and_the_rest_412(store: DiskS3) -> None:
    s3 = client(store)
    s3.create_bucket(Bucket="b")
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def create(i: int) -> None:
        mine = client(store)
        barrier.wait()
        try:
            mine.put_object(Bucket="b", Key="records/00000000000000000042.batch", Body=f"writer {i}".encode(), IfNoneMatch="*")
            outcomes.append(f"ok {i}")
        except ClientError as exc:
            outcomes.append(str(code_of(exc)[0]))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o.startswith("ok")]
    assert len(winners) == 1 and outcomes.count("412") == 7, outcomes
    body = s3.get_object(Bucket="b", Key="records/00000000000000000042.batch")["Body"].read()
    assert body == f"writer {winners[0].split()[1]}".encode()


def test_listing_pages_groups_by_delimiter_and_url_encodes(store: DiskS3) -> None:
    s3 = client(store)
    s3.create_bucket(Bucket="b")
    keys = [f"topics/t{t}/partitions/{p:04d}/records/{o:06d}.batch" for t in range(3) for p in range(2) for o in range(4)]
    keys += ["topics/t0/watermark.json", "topics/naïve key+1.json", "zzz"]
    for k in keys:
        s3.put_object(Bucket="b", Key=k, Body=k.encode())
    listed = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="b", Prefix="topics/", PaginationConfig={"PageSize": 5})
              for o in page.get("Contents", [])]
    assert listed == sorted(k for k in keys if k.startswith("topics/"))  # boto3 asked for encoding-type=url and decoded
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket="b", Prefix="topics/", Delimiter="/", PaginationConfig={"PageSize": 1}))
    prefixes = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
    files = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert prefixes == ["topics/t0/", "topics/t1/", "topics/t2/"] and files == ["topics/naïve key+1.json"]
    assert len(pages) == 4  # one entry per page
    one = s3.list_objects_v2(Bucket="b", Prefix="topics/t1/partitions/0001/records/", StartAfter="topics/t1/partitions/0001/records/000001.batch")
    assert [o["Key"] for o in one["Contents"]] == [f"topics/t1/partitions/0001/records/{o:06d}.batch" for o in (2, 3)]
    assert one["Contents"][0]["Size"] == len(one["Contents"][0]["Key"])


def test_ranges_conditional_gets_copies_and_deletes(store: DiskS3) -> None:
    s3 = client(store)
    s3.create_bucket(Bucket="b")
    etag = s3.put_object(Bucket="b", Key="k", Body=b"0123456789")["ETag"]
    assert s3.get_object(Bucket="b", Key="k", Range="bytes=2-4")["Body"].read() == b"234"
    assert s3.get_object(Bucket="b", Key="k", Range="bytes=-3")["Body"].read() == b"789"
    assert s3.get_object(Bucket="b", Key="k", Range="bytes=7-")["Body"].read() == b"789"
    with pytest.raises(ClientError) as beyond:
        s3.get_object(Bucket="b", Key="k", Range="bytes=20-30")
    assert code_of(beyond.value)[0] == 416
    with pytest.raises(ClientError) as unchanged:
        s3.get_object(Bucket="b", Key="k", IfNoneMatch=etag)
    assert code_of(unchanged.value)[0] == 304
    with pytest.raises(ClientError) as changed:
        s3.get_object(Bucket="b", Key="k", IfMatch='"not-it"')
    assert code_of(changed.value)[0] == 412
    s3.copy_object(Bucket="b", Key="copy", CopySource={"Bucket": "b", "Key": "k"})
    assert s3.get_object(Bucket="b", Key="copy")["Body"].read() == b"0123456789"
    with pytest.raises(ClientError) as not_empty:
        s3.delete_bucket(Bucket="b")
    assert code_of(not_empty.value) == (409, "BucketNotEmpty")
    s3.delete_object(Bucket="b", Key="k")
    deleted = s3.delete_objects(Bucket="b", Delete={"Objects": [{"Key": "copy"}, {"Key": "never"}]})
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["copy", "never"]
    assert s3.list_objects_v2(Bucket="b")["KeyCount"] == 0
    s3.delete_bucket(Bucket="b")
    with pytest.raises(ClientError) as gone:
        s3.head_bucket(Bucket="b")
    assert code_of(gone.value)[0] == 404


def test_multipart_uploads_are_refused_with_a_clear_error(store: DiskS3) -> None:
    s3 = client(store)
    s3.create_bucket(Bucket="b")
    with pytest.raises(ClientError) as refused:
        s3.create_multipart_upload(Bucket="b", Key="big")
    assert code_of(refused.value) == (501, "NotImplemented")
    assert "multipart" in refused.value.response["Error"]["Message"]


def test_objects_outlive_a_kill_9_of_the_server(store: DiskS3) -> None:
    s3 = client(store)
    s3.create_bucket(Bucket="b")
    for i in range(50):
        s3.put_object(Bucket="b", Key=f"k{i:02d}", Body=bytes([i]) * 100)
    store.kill()
    store.start()
    s3 = client(store)
    assert s3.list_objects_v2(Bucket="b")["KeyCount"] == 50
    assert s3.get_object(Bucket="b", Key="k49")["Body"].read() == bytes([49]) * 100


def test_tansu_on_it_keeps_every_acknowledged_record_of_racing_producers_across_kill_9(store: DiskS3, tmp_path: Path) -> None:
    """Four producers append to one partition at once (Tansu's conditional writes race), then the broker
    and the storage server are both killed and restarted: every acknowledged record is still there."""
    store.create_bucket(TANSU_BUCKET)
    broker = tansu_on_s3(store.endpoint_url, 0, tmp_path / "tansu.log").start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for future in admin.create_topics([NewTopic("race", 1, 1)]).values():
            future.result()
        acked: list[bytes] = []
        lock = threading.Lock()

        def produce(writer: int) -> None:
            producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})

            def done(err: Any, msg: Any) -> None:
                if err is None:
                    with lock:
                        acked.append(msg.value())

            for i in range(150):
                producer.produce("race", value=f"{writer}-{i}".encode(), partition=0, on_delivery=done)
                producer.poll(0)
            assert producer.flush(60) == 0

        writers = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        assert len(acked) == 600
        assert set(readable(broker.bootstrap, "race", 1)) == set(acked)

        broker.kill()
        store.kill()
        store.start()
        broker.start()
        assert set(readable(broker.bootstrap, "race", 1)) == set(acked)
    finally:
        broker.stop()
