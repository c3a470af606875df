"""The asyncio client: ``await submit(...)`` returns once the broker acknowledged the request, and
``async for completion in client.completions()`` reads the completion topic without blocking the loop.

librdkafka works on its own threads; this client serves the producer's delivery reports on one
background thread and hands each to the event loop (``call_soon_threadsafe``), and polls consumers
in a worker thread a fifth of a second at a time, so cancelling an ``async for`` takes effect promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from voicenote_client.client import (
    Completion,
    DeliveryCallback,
    JobTimeout,
    PublishError,
    VoicenoteClient,
)
from voicenote_client.codec import DecodeError


class AsyncVoicenoteClient:
    """The asyncio face of :class:`VoicenoteClient` (same arguments); use ``async with`` or ``await close()``."""

    def __init__(self, config: Mapping[str, Any], **options: Any) -> None:
        self.sync = VoicenoteClient(config, **options)
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def requests_topic(self) -> str:
        return self.sync.requests_topic

    @property
    def completions_topic(self) -> str:
        return self.sync.completions_topic

    async def __aenter__(self) -> AsyncVoicenoteClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def request(self, text: str, **options: Any) -> dict[str, Any]:
        """The checked request event ``submit`` would send (see :meth:`VoicenoteClient.request`)."""
        return self.sync.request(text, **options)

    async def submit(self, text: str, *, on_delivery: DeliveryCallback | None = None,
                     headers: Mapping[str, str | bytes] | None = None, **options: Any) -> str:
        """Publish one request and return its job id once the broker acknowledged it (PublishError if it refused).

        ``on_delivery(err, job_id)``, when given, runs on the event loop first. Submit many at once with
        ``asyncio.gather``: they share the producer's batches.
        """
        record = self.sync.request(text, **options)
        codec = self.sync.codecs.request
        # A registry codec may call the registry (HTTP) on its first record: off the loop. A codec that does not
        # say whether it uses one is treated as if it did.
        value = await asyncio.to_thread(self.sync.encode, record) if getattr(codec, "uses_registry", True) else self.sync.encode(record)
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()
        job_id = str(record["job_id"])

        def settle(err: KafkaError | None) -> None:
            try:
                if on_delivery is not None:
                    on_delivery(err, job_id)
            finally:
                if not acked.done():
                    if err is None:
                        acked.set_result(None)
                    else:
                        acked.set_exception(PublishError(f"{job_id}: {err.str()}"))

        def delivered(err: KafkaError | None, _msg: Message) -> None:  # on the poll thread
            loop.call_soon_threadsafe(settle, err)

        producer = self.sync._ensure_producer()
        self._ensure_poller()
        topic, key = self._topic(record), job_id.encode()
        wire_headers = [("traceparent", record["trace_parent"].encode())]
        wire_headers += [(k, v if isinstance(v, bytes) else v.encode()) for k, v in (headers or {}).items()]
        for attempt in range(100):
            try:
                producer.produce(topic, key=key, value=value, headers=wire_headers, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let the poll thread drain it
                if attempt == 99:
                    raise PublishError(f"{topic}: the producer's queue stayed full") from None
                await asyncio.sleep(0.05)
            except KafkaException as exc:
                raise PublishError(f"{topic}: {exc}") from exc
        self.sync._submitted_at[job_id] = record["created_at"]
        await acked
        return job_id

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait (off the loop) until every submitted request is acknowledged."""
        await asyncio.to_thread(self.sync.flush, timeout)

    async def close(self, timeout: float = 30.0) -> None:
        """Wait for the broker's acknowledgements (PublishError for requests still unacknowledged), then let go."""
        try:
            await asyncio.to_thread(self.sync.flush, timeout)
        finally:
            self._stop.set()
            if self._poller is not None:
                await asyncio.to_thread(self._poller.join)
                self._poller = None
            with contextlib.suppress(PublishError):  # already raised by the flush above
                await asyncio.to_thread(self.sync.close, 0)

    async def completions(self, *, group_id: str | None = None, since_ms: int | None = None, from_beginning: bool = False,
                          until_end: bool = False, idle_timeout: float | None = None,
                          on_undecodable: Callable[[Message, DecodeError], None] | None = None) -> AsyncIterator[Completion]:
        """Completions as they arrive; the options are those of :meth:`VoicenoteClient.completions`.

        Leaving the loop early (``break``) closes the consumer when the generator is finalized; wrap it in
        ``contextlib.aclosing`` to close it at once.
        """
        loop = asyncio.get_running_loop()
        thread = ThreadPoolExecutor(1, thread_name_prefix="voicenote-completions")  # one consumer, one thread
        try:
            reader = await loop.run_in_executor(thread, lambda: self.sync._reader(
                group_id=group_id, since_ms=since_ms, from_beginning=from_beginning, until_end=until_end,
                idle_timeout=idle_timeout, on_undecodable=on_undecodable))
            try:
                while True:
                    got = await loop.run_in_executor(thread, reader.step, 0.2)
                    if got is reader.END:
                        return
                    if isinstance(got, Completion):
                        yield got
                    await loop.run_in_executor(thread, reader.done_with_last)
            finally:
                thread.submit(reader.close)  # runs after a step still in flight (a cancelled await leaves it running)
        finally:
            thread.shutdown(wait=False)

    async def wait(self, job_id: str, *, timeout: float = 60.0, since_ms: int | None = None) -> Completion:
        """The completion of ``job_id``; JobTimeout when none arrives within ``timeout`` seconds."""
        since_ms = self.sync._since(job_id, since_ms)
        stream = self.completions(since_ms=since_ms, from_beginning=since_ms is None, idle_timeout=timeout,
                                  on_undecodable=lambda _m, _e: None)
        try:
            async with asyncio.timeout(timeout):
                async for completion in stream:
                    if completion.job_id == job_id:
                        return completion
        except TimeoutError:
            pass
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        raise JobTimeout(f"no completion for {job_id} on {self.completions_topic} within {timeout:g}s")

    def _topic(self, record: Mapping[str, Any]) -> str:
        return self.sync.router.topic(record["model"])

    def _ensure_poller(self) -> None:
        if self._poller is None:
            producer = self.sync._ensure_producer()
            self._stop.clear()

            def serve() -> None:
                while not self._stop.is_set():
                    producer.poll(0.1)

            self._poller = threading.Thread(target=serve, name="voicenote-delivery-reports", daemon=True)
            self._poller.start()
