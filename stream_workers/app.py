"""Builds the Faust app of one worker role from settings. The one place agents are wired.

Roles are separate consumer groups so they scale apart: ``synthesis`` (the GPU pods, scaled by KEDA
on this group's lag) and ``completion`` (storage, completion events and the status projection).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Any, AsyncIterator

import faust
from mode.supervisors import CrashingSupervisor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas.errors import DecodeError
from stream_workers.completion import StatusProjector, Storer
from stream_workers.context import WorkerContext
from stream_workers.deadletter import dead_letter
from stream_workers.engine.base import SpeechEngine
from stream_workers.faust_driver import FetchWaitApp
from stream_workers.synthesis import Synthesizer
from voicenote.storage.local import LocalAudioStore

log = logging.getLogger(__name__)


class Role(str, Enum):
    synthesis = "synthesis"
    completion = "completion"
    webhooks = "webhooks"  # not a Faust app: stream_workers/webhooks/worker.py


def _faust_app(ctx: WorkerContext, role: Role) -> FetchWaitApp:
    s = ctx.settings
    return FetchWaitApp(
        f"{s.worker.group_id}-{role.value}",
        broker=";".join(f"kafka://{h}" for h in s.kafka.bootstrap_servers.split(",")),
        fetch_max_wait_ms=s.kafka.fetch_max_wait_ms,
        broker_session_timeout=s.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=s.kafka.heartbeat_interval_ms / 1000,
        broker_commit_interval=s.worker.commit_interval_seconds,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,  # topics come from the catalog via provisioning
        topic_disable_leader=True,
        store="memory://",
        web_host="127.0.0.1",
        web_port=s.worker.web_port,
        key_serializer="raw",
        value_serializer="raw",
        producer_max_request_size=8 * 1_048_576,
    )


def build_app(ctx: WorkerContext, role: Role, engine: SpeechEngine | None = None) -> faust.App:
    app = _faust_app(ctx, role)
    topic = {spec.name: app.topic(spec.name, key_type=bytes, value_type=bytes) for spec in ctx.catalog.all()}
    cat = ctx.catalog
    dlq = topic[cat.dead_letter.name]

    async def send_dead_letter(event: Any, consumer: str, exc: DecodeError) -> Any:
        log.warning("dead-lettering %s[%s]@%s: %s", event.message.topic, event.message.partition, event.message.offset, exc)
        record = dead_letter(event, consumer=consumer, error_type=exc.reason, error_message=str(exc))
        return await dlq.send(value=ctx.codecs.dead_letter.encode(record))

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # Prometheus scrape endpoint on Faust's web port (result-cache hit ratio and whatever else registers).
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST)

    if role is Role.synthesis:
        assert engine is not None
        synth = Synthesizer(engine, ctx.codecs, ctx.store, ctx.settings.storage, ThreadPoolExecutor(1, "engine"),
                            cache=ctx.cache)
        audio = topic[cat.audio.name]
        window = ctx.settings.worker.window_seconds
        max_batch = ctx.settings.worker.max_batch

        @app.agent(topic[cat.requests.name], name="synthesis", supervisor_strategy=CrashingSupervisor)
        async def synthesis_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for events in stream.take_events(max_batch, within=window):
                started_ms = int(time.time() * 1000)
                first_ms = min(int((e.message.timestamp or time.time()) * 1000) for e in events)
                outcome = await synth.process([e.value for e in events], started_ms, max(0, started_ms - first_ms))
                pending = []
                for refused in outcome.refused:
                    pending.append(await send_dead_letter(events[refused.index], "synthesis", DecodeError(refused.reason, refused.message)))
                for record in outcome.results:
                    pending.append(await audio.send(key=record["job_id"].encode(), value=ctx.codecs.result.encode(record)))
                # The batch is acknowledged (and later committed) only once every output is on the broker.
                await asyncio.gather(*pending)
                yield None

    else:
        assert ctx.jobs is not None
        storer = Storer(ctx.store, ctx.settings.storage, public_base_url=ctx.settings.api.public_base_url, cache=ctx.cache)
        projector = StatusProjector(ctx.jobs)
        completions = topic[cat.completions.name]

        if isinstance(ctx.store, LocalAudioStore):
            store = ctx.store

            @app.timer(interval=3600.0)
            async def expire_local_audio() -> None:
                # The local counterpart of the S3 lifecycle rule (reads already refuse expired files).
                removed = await store.expire()
                if removed:
                    log.info("expired %d local audio files", len(removed))

        @app.agent(topic[cat.audio.name], name="storage", supervisor_strategy=CrashingSupervisor)
        async def storage_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for event in stream.events():
                try:
                    result = ctx.codecs.result.decode(event.value)
                except DecodeError as exc:
                    await (await send_dead_letter(event, "storage", exc))
                    continue
                completion = await storer.complete(result)
                await (await completions.send(key=completion["job_id"].encode(), value=ctx.codecs.completion.encode(completion)))
                yield None

        @app.agent(topic[cat.requests.name], name="status-requests", supervisor_strategy=CrashingSupervisor)
        async def status_requests_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for value in stream:
                try:
                    request = ctx.codecs.request.decode(value)
                except DecodeError:
                    # The synthesis group owns dead-lettering of request records; one copy is enough.
                    continue
                await projector.on_request(request)
                yield None

        @app.agent(topic[cat.completions.name], name="status-completions", supervisor_strategy=CrashingSupervisor)
        async def status_completions_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for event in stream.events():
                try:
                    completion = ctx.codecs.completion.decode(event.value)
                except DecodeError as exc:
                    await (await send_dead_letter(event, "status", exc))
                    continue
                await projector.on_completion(completion)
                yield None

    return app
