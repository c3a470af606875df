"""Builds the Faust app of one worker role from settings. The one place agents are wired.

Roles are separate consumer groups so they scale apart: ``synthesis`` (the GPU pods, scaled by KEDA
on this group's lag) and ``completion`` (storage, completion events and the status projection).
A synthesis worker consumes only the request topic of its engine's model family, in that family's
group (voicenote/models.py); the completion role projects the requests of every family.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import Enum
from typing import Any

import faust
from mode.supervisors import CrashingSupervisor
from prometheus_client import generate_latest

from schemas.errors import DecodeError
from schemas.events import JobCompletion
from stream_workers.completion.role import CompletionRole
from stream_workers.engine.base import SpeechEngine
from stream_workers.runtime.context import WorkerContext
from stream_workers.runtime.deadletter import dead_letter
from stream_workers.runtime.faust_driver import FetchWaitApp
from stream_workers.runtime.grouping import acked_groups
from stream_workers.runtime.kafka_security import faust_credentials
from stream_workers.runtime.metrics import ProgressMetrics, faust_consumer_lag, track_committed_offsets
from stream_workers.runtime.progress import GroupOffsets, ProgressMonitor, ProgressWatch, faust_assignment, faust_fetched_ends
from stream_workers.runtime.result_cache import CACHE_REGISTRY
from stream_workers.synthesis.role import SynthesisRole
from voicenote.models import family_of, synthesis_group

log = logging.getLogger(__name__)


# Records the completion role handles concurrently, and how long it waits to fill a group once one has come
# (stream_workers/runtime/grouping.py: no timer runs while the worker is idle).
COMPLETION_GROUP_SIZE = 64
COMPLETION_GROUP_SECONDS = 0.01


class Role(str, Enum):
    synthesis = "synthesis"
    completion = "completion"
    webhooks = "webhooks"  # not a Faust app: stream_workers/webhooks/worker.py


def consumer_group(ctx: WorkerContext, role: Role) -> str:
    """The role's consumer group; a synthesis worker's depends on the model family its engine serves."""
    s = ctx.settings
    if role is Role.synthesis:
        return synthesis_group(s.worker.group_id, family_of(s.engine.kind))
    return f"{s.worker.group_id}-{role.value}"


def _faust_app(ctx: WorkerContext, role: Role) -> FetchWaitApp:
    s = ctx.settings
    return FetchWaitApp(
        consumer_group(ctx, role),
        # The synthesis loop leaves read-ahead requests unacknowledged on shutdown; stopping commits
        # what is acknowledged instead of waiting for them.
        stream_wait_empty=role is not Role.synthesis,
        broker=";".join(f"kafka://{h}" for h in s.kafka.bootstrap_servers.split(",")),
        broker_credentials=faust_credentials(s.kafka),
        fetch_max_wait_ms=s.kafka.fetch_max_wait_ms,
        fetch_idle_wait_ms=s.kafka.fetch_idle_wait_ms or None,
        fetch_idle_after_seconds=s.kafka.fetch_idle_after_seconds,
        broker_session_timeout=s.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=s.kafka.heartbeat_interval_ms / 1000,
        broker_commit_interval=s.worker.commit_interval_seconds,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,  # topics come from the catalog via provisioning
        topic_disable_leader=True,
        store="memory://",
        web_host=s.worker.web_host,
        web_port=s.worker.web_port,
        key_serializer="raw",
        value_serializer="raw",
        producer_max_request_size=8 * 1_048_576,
        producer_linger=s.kafka.worker_linger_ms / 1000,
        # aiokafka's 16 KiB default fits one audio event a batch; every other sender then waits for a drain.
        producer_max_batch_size=1_048_576,
    )


def build_app(ctx: WorkerContext, role: Role, engine: SpeechEngine | None = None) -> faust.App:
    app = _faust_app(ctx, role)
    track_committed_offsets(app)
    topic = {spec.name: app.topic(spec.name, key_type=bytes, value_type=bytes) for spec in ctx.catalog.all()}
    cat = ctx.catalog
    dlq = topic[cat.dead_letter.name]
    progress = ProgressMetrics()

    async def send_dead_letter(event: Any, consumer: str, exc: DecodeError) -> Any:
        log.warning("dead-lettering %s[%s]@%s: %s", event.message.topic, event.message.partition, event.message.offset, exc)
        letter = dead_letter(event, consumer=consumer, error_type=exc.reason, error_message=str(exc))
        return await dlq.send(value=ctx.codecs.dead_letter.encode_event(letter))

    if role is Role.synthesis:
        assert engine is not None
        requests = cat.requests_for(family_of(ctx.settings.engine.kind))
        log.info("synthesis consumes %s in group %s", requests.name, consumer_group(ctx, role))
        segments = topic[cat.segments.name] if cat.segments else None
        synthesis = SynthesisRole(ctx, engine, _sender(topic[cat.audio.name]), send_dead_letter,
                                  _sender(segments) if segments is not None else None)
        _wire_synthesis(app, ctx, synthesis, topic[requests.name], progress)
        _watch_progress(app, ctx, consumer_group(ctx, role), [requests.name], progress)
    else:
        completions = topic[cat.completions.name]

        async def send_completion(completion: JobCompletion) -> Any:
            return await completions.send(key=completion.job_id.encode(), value=ctx.codecs.completion.encode_event(completion))

        _wire_completion(app, ctx, CompletionRole.build(ctx, send_completion, send_dead_letter), topic[cat.audio.name], progress)
        _watch_progress(app, ctx, consumer_group(ctx, role), [cat.audio.name, *(spec.name for spec in cat.request_topics())],
                        progress)
    return app


def _sender(topic: Any) -> Callable[[bytes, bytes], Awaitable[Any]]:
    async def send(key: bytes, value: bytes) -> Any:
        return await topic.send(key=key, value=value)

    return send


def _metrics_page(app: FetchWaitApp, render: Callable[[], bytes]) -> None:
    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(render() + generate_latest(CACHE_REGISTRY), content_type="text/plain; version=0.0.4")


def _wire_completion(app: FetchWaitApp, ctx: WorkerContext, role: CompletionRole, audio: Any, progress: ProgressMetrics) -> None:
    """The completion agents (storage, status) over the role's handler, and its timed rounds."""
    w = ctx.settings.worker
    handler = role.handler
    _metrics_page(app, lambda: handler.metrics.render() + progress.render())

    # The labelled series exists from the start (at 0), not only after the first sample.
    lag_gauge = handler.metrics.consumer_lag.labels(group=consumer_group(ctx, Role.completion))

    @app.timer(ctx.settings.synthesis.lag_interval_seconds)
    async def sample_completion_lag() -> None:
        lag_gauge.set(await faust_consumer_lag(app))

    if role.local_store is not None:
        @app.timer(interval=3600.0)
        async def expire_local_audio() -> None:
            await role.expire_local_audio()

    @app.timer(interval=w.projection_check_seconds)
    async def heal_projection() -> None:
        await role.heal_projection()

    @app.timer(interval=w.projection_check_seconds)
    async def end_lost_requests() -> None:
        await role.end_lost_requests()

    @app.timer(interval=w.watchdog_interval_seconds)
    async def check_overdue_jobs() -> None:
        await role.check_overdue_jobs()

    @app.timer(interval=w.watchdog_interval_seconds)
    async def end_stuck_jobs() -> None:
        await role.end_stuck_jobs()

    @app.agent(audio, name="storage", supervisor_strategy=CrashingSupervisor)
    async def storage_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        assert isinstance(stream, faust.Stream)  # faust.StreamT lacks noack; what an agent gets has it
        async for events in acked_groups(stream, COMPLETION_GROUP_SIZE, COMPLETION_GROUP_SECONDS):
            await handler.storage(events)
            yield None

    every_request_topic = app.topic(*(spec.name for spec in ctx.catalog.request_topics()), key_type=bytes, value_type=bytes)

    @app.agent(every_request_topic, name="status-requests", supervisor_strategy=CrashingSupervisor)
    async def status_requests_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        assert isinstance(stream, faust.Stream)  # faust.StreamT lacks noack; what an agent gets has it
        async for events in acked_groups(stream, COMPLETION_GROUP_SIZE, COMPLETION_GROUP_SECONDS):
            await handler.status(events)
            yield None


def _watch_progress(app: FetchWaitApp, ctx: WorkerContext, group: str, topics: list[str], metrics: ProgressMetrics) -> None:
    """Readiness that watches progress (stream_workers/runtime/progress.py): a round every ``worker.progress_check_seconds``."""
    stall, leave = ctx.settings.progress_bounds()
    monitor = ProgressMonitor(group=group, reader=GroupOffsets(ctx.settings.kafka, group), watch=ProgressWatch(stall),
                              health=ctx.health, exit_seconds=leave, assigned=lambda: faust_assignment(app), topics=topics,
                              gauge=metrics.seconds_since_progress.labels(group),
                              known_ends=lambda partitions: faust_fetched_ends(app, partitions),
                              record_loss=ctx.jobs.record_broker_data_loss if ctx.jobs is not None else None)

    @app.timer(ctx.settings.worker.progress_check_seconds)
    async def watch_progress() -> None:
        if monitor.may_rest(app.fetch_wait.idle, ctx.settings.worker.progress_idle_check_seconds):
            monitor.report()
            return
        await monitor.check()

    @app.task
    async def prime_progress() -> None:
        # Not a consumer: the topics' ids as they are at start, the baseline that tells a broker restarted empty apart.
        while not await monitor.prime():
            await asyncio.sleep(ctx.settings.worker.progress_check_seconds)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # sent once the consumer has stopped
    async def close_progress_reader(sender: Any, **_: Any) -> None:
        await asyncio.to_thread(monitor.close)


def _wire_synthesis(app: FetchWaitApp, ctx: WorkerContext, role: SynthesisRole, requests: Any, progress: ProgressMetrics) -> None:
    """The synthesis agent over the role's loop, plus its metrics, drain hook and advert."""
    _metrics_page(app, lambda: role.metrics.render() + progress.render())

    @app.agent(requests, name="synthesis", supervisor_strategy=CrashingSupervisor)
    async def synthesis_agent(stream: faust.StreamT[bytes]) -> None:
        assert isinstance(stream, faust.Stream)  # faust.StreamT lacks noack; what an agent gets has it
        manual = stream.noack()
        await role.consume(manual.events(), manual.ack, lambda event: event.message.tp)
        await asyncio.Event().wait()  # drained: idle until the worker stops the agent

    async def drain() -> None:
        await role.drain()
        await app.consumer.commit()
        log.info("synthesis drained: rows in the engine published and committed")

    app.drain_hook = drain

    @app.task
    async def advertise() -> None:
        # Not a consumer: a missed advert only leaves GET /v1/audio/voices without this engine for a while.
        await role.advertise()

    # The labelled series exists from the start (at 0), not only after the first sample.
    lag_gauge = role.metrics.consumer_lag.labels(group=consumer_group(ctx, Role.synthesis), model=family_of(ctx.settings.engine.kind))

    @app.timer(ctx.settings.synthesis.lag_interval_seconds)
    async def sample_lag() -> None:
        lag_gauge.set(await faust_consumer_lag(app))
