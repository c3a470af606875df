"""Builds the Faust app of one worker role from settings. The one place agents are wired.

Roles are separate consumer groups so they scale apart: ``synthesis`` (the GPU pods, scaled by KEDA
on this group's lag) and ``completion`` (storage, completion events and the status projection).
A synthesis worker consumes only the request topic of its engine's model family, in that family's
group (voicenote/models.py); the completion role projects the requests of every family.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from enum import Enum
from typing import Any

import faust
from mode.supervisors import CrashingSupervisor
from prometheus_client import generate_latest

from schemas.errors import DecodeError
from schemas.events import SpeechSegment
from schemas.events import SynthesisResult as SynthesisResultEvent
from schemas.topics import CPU_FAMILY
from stream_workers.completion.early_check import EarlyCheck, EarlyCheckMetrics, Facts, topic_facts
from stream_workers.completion.projection import READ_TIMEOUT_SECONDS, ProjectionGuard
from stream_workers.completion.projection import rebuild as rebuild_projection
from stream_workers.completion.status import StatusProjector, fresh_results
from stream_workers.completion.storage import Storer
from stream_workers.completion.watchdog import LostRequests, Watchdog
from stream_workers.engine.base import SpeechEngine
from stream_workers.engine.slots import continuous
from stream_workers.runtime.acks import InOrderAcks
from stream_workers.runtime.context import WorkerContext
from stream_workers.runtime.deadletter import dead_letter
from stream_workers.runtime.faust_driver import FetchWaitApp
from stream_workers.runtime.kafka_security import faust_credentials
from stream_workers.runtime.metrics import (
    CompletionMetrics,
    ProgressMetrics,
    SynthesisMetrics,
    faust_consumer_lag,
    track_committed_offsets,
)
from stream_workers.runtime.progress import GroupOffsets, ProgressMonitor, ProgressWatch, faust_assignment, faust_fetched_ends
from stream_workers.runtime.result_cache import CACHE_REGISTRY
from stream_workers.synthesis.batching import BatchPolicy
from stream_workers.synthesis.loop import SynthesisLoop
from stream_workers.synthesis.synthesizer import Refused, Synthesizer
from voicenote.adverts import ADVERT_INTERVAL_SECONDS, publish_advert
from voicenote.errors import DependencyUnavailable, JobStoreError
from voicenote.jobstore import redis_client
from voicenote.kafka import read_to_end
from voicenote.models import family_of, synthesis_group
from voicenote.storage.local import LocalAudioStore
from voicenote.tracing import record_span

log = logging.getLogger(__name__)


# Records the completion role handles concurrently, and how long it waits to fill a group.
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
        _wire_synthesis(app, ctx, engine, topic[requests.name], topic[cat.audio.name], send_dead_letter,
                        topic[cat.segments.name] if cat.segments else None, progress)
        _watch_progress(app, ctx, consumer_group(ctx, role), [requests.name], progress)

    else:
        assert ctx.jobs is not None
        storer = Storer(ctx.store, ctx.settings.storage, public_base_url=ctx.settings.api.public_base_url, cache=ctx.cache)
        projector = StatusProjector(ctx.jobs)
        completions = topic[cat.completions.name]
        completion_metrics = CompletionMetrics()

        @app.page("/metrics")
        async def completion_metrics_page(web: Any, request: Any) -> Any:
            body = completion_metrics.render() + progress.render() + generate_latest(CACHE_REGISTRY)
            return web.bytes(body, content_type="text/plain; version=0.0.4")

        @app.timer(ctx.settings.synthesis.lag_interval_seconds)
        async def sample_completion_lag() -> None:
            completion_metrics.consumer_lag.set(await faust_consumer_lag(app))

        local = getattr(ctx.store, "inner", ctx.store)  # the store itself, not its retrying proxy
        if isinstance(local, LocalAudioStore):
            store = local

            @app.timer(interval=3600.0)
            async def expire_local_audio() -> None:
                # The local counterpart of the S3 lifecycle rule (reads already refuse expired files).
                removed = await store.expire()
                if removed:
                    log.info("expired %d local audio files", len(removed))

        # The completion side handles what a fetch brings as a group: one storage call, the group's
        # sends in flight together, one Redis round trip. The group is acknowledged only once every
        # output is on the broker (at-least-once; the work is idempotent per job).
        group, within = COMPLETION_GROUP_SIZE, COMPLETION_GROUP_SECONDS

        async def decode_group(events: Sequence[Any], codec: Any, consumer: str | None) -> tuple[list[Any], list[Any]]:
            """The decoded records, and the pending dead-letter sends of the rest (None: leave them to another consumer)."""
            records, dead = [], []
            for event in events:
                try:
                    records.append(codec.decode_event(event.value))
                except DecodeError as exc:
                    if consumer is not None:
                        completion_metrics.dead_letters.inc()
                        dead.append(await send_dead_letter(event, consumer, exc))
            return records, dead

        guard = ProjectionGuard(ctx.jobs, lambda: rebuild_projection(ctx.settings, ctx.jobs, ctx.codecs))  # type: ignore[arg-type]

        @app.timer(interval=ctx.settings.worker.projection_check_seconds)
        async def heal_projection() -> None:
            # Redis restarted empty: rebuild from the topics without an operator (stream_workers/completion/projection.py).
            # Job-store calls wait out an outage; a failed topic read is logged and tried next time.
            try:
                await guard.check()
            except DependencyUnavailable as exc:
                log.warning("projection check failed, trying again in %.0fs: %s", ctx.settings.worker.projection_check_seconds, exc)

        async def emit_completions(records: Any) -> None:
            await asyncio.gather(*[await completions.send(key=c.job_id.encode(), value=ctx.codecs.completion.encode_event(c))
                                   for c in records])

        watchdog = Watchdog(ctx.jobs, projector, emit_completions,  # type: ignore[arg-type]
                            stuck_after=ctx.settings.worker.stuck_after_seconds)

        def request_ids() -> set[str]:
            # Keyed by job id (the API's and the worker's records); an unkeyed direct publish is decoded.
            ids: set[str] = set()
            for spec in cat.request_topics():
                for msg in read_to_end(ctx.settings.kafka, spec.name, timeout=READ_TIMEOUT_SECONDS,
                                       group_prefix="voicenote-lost-requests", missing_ok=True):
                    key, value = msg.key(), msg.value()
                    if key:
                        ids.add(key.decode(errors="replace"))
                    elif value is not None:
                        try:
                            ids.add(ctx.codecs.request.decode_event(value).job_id)
                        except DecodeError:
                            continue  # not a request at all: no job of ours can be missing because of it
            return ids

        lost_requests = LostRequests(ctx.jobs, projector, emit_completions,  # type: ignore[arg-type]
                                     lambda: asyncio.to_thread(request_ids))

        @app.timer(interval=ctx.settings.worker.projection_check_seconds)
        async def end_lost_requests() -> None:
            # The broker lost data (a worker recorded it, stream_workers/runtime/progress.py): the jobs whose requests went
            # with it end as broker_data_lost. A timer: a failed round (broker away) is logged and runs again.
            try:
                await lost_requests.sweep()
            except Exception:  # noqa: BLE001
                log.exception("lost-request sweep failed; trying again in %.0fs", ctx.settings.worker.projection_check_seconds)

        async def reapply(results: Sequence[SynthesisResultEvent]) -> None:
            # Exactly the storage agent's path: store the audio, publish the completion, then project it.
            done = await storer.complete_many(results)
            await asyncio.gather(*[await completions.send(key=c.job_id.encode(), value=ctx.codecs.completion.encode_event(c))
                                   for c in done])
            await projector.on_completions(done)
            completion_metrics.completed(done)

        request_groups = {spec.name: synthesis_group(ctx.settings.worker.group_id, family)
                          for family, spec in [(CPU_FAMILY, cat.requests), *cat.family_requests]}

        def overdue_facts(job_ids: list[str]) -> dict[str, Facts]:
            return topic_facts(ctx.settings.kafka, ctx.codecs, job_ids, request_topics=request_groups,
                               audio_topic=cat.audio.name, completion_topic=cat.completions.name,
                               timeout=READ_TIMEOUT_SECONDS)

        early_check = EarlyCheck(ctx.jobs, projector, emit_completions,  # type: ignore[arg-type]
                                 lambda job_ids: asyncio.to_thread(overdue_facts, job_ids), reapply,
                                 factor=ctx.settings.worker.early_check_factor,
                                 floor=ctx.settings.worker.early_check_floor_seconds,
                                 stuck_after=ctx.settings.worker.stuck_after_seconds, metrics=EarlyCheckMetrics(completion_metrics.registry))

        @app.timer(interval=ctx.settings.worker.watchdog_interval_seconds)
        async def check_overdue_jobs() -> None:
            # Jobs past their estimate times a factor, re-examined against the topics (stream_workers/completion/early_check.py).
            try:
                await early_check.sweep()
            except Exception:  # noqa: BLE001
                log.exception("early check failed; trying again in %.0fs", ctx.settings.worker.watchdog_interval_seconds)

        @app.timer(interval=ctx.settings.worker.watchdog_interval_seconds)
        async def end_stuck_jobs() -> None:
            # A timer, not a consumer: a failed sweep (broker down) is logged and runs again next interval.
            try:
                await watchdog.sweep()
            except Exception:  # noqa: BLE001
                log.exception("watchdog sweep failed; trying again in %.0fs", ctx.settings.worker.watchdog_interval_seconds)

        @app.agent(topic[cat.audio.name], name="storage", supervisor_strategy=CrashingSupervisor)
        async def storage_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            assert isinstance(stream, faust.Stream)  # faust.StreamT lacks take_events; what an agent gets has it
            async for events in stream.take_events(group, within=within):
                results, sent = await decode_group(events, ctx.codecs.result, "storage")
                fresh = fresh_results(results, await projector.already_completed([r.job_id for r in results]))
                if len(fresh) < len(results):
                    log.info("dropping %d results of jobs already completed (redelivered requests)", len(results) - len(fresh))
                done = [dataclasses.replace(c, trace_parent=record_span(
                            "voicenote.completion", c.trace_parent, seconds=(c.upload_ms or 0) / 1000,
                            attributes={"voicenote.job_id": c.job_id, "voicenote.status": c.status}))
                        for c in await storer.complete_many(fresh)]
                for completion in done:
                    sent.append(await completions.send(key=completion.job_id.encode(),
                                                       value=ctx.codecs.completion.encode_event(completion)))
                await asyncio.gather(*sent)
                # Projected here, once the events are on the broker (so a job never reads as finished
                # before its completion event exists), rather than by consuming our own output again:
                # that cost a third of this role's CPU, a fetch stream and a broker hop of latency.
                # `voicenote projection rebuild` still rebuilds from the completion topic.
                await projector.on_completions(done)
                completion_metrics.completed(done)
                yield None

        every_request_topic = app.topic(*(spec.name for spec in cat.request_topics()), key_type=bytes, value_type=bytes)

        @app.agent(every_request_topic, name="status-requests", supervisor_strategy=CrashingSupervisor)
        async def status_requests_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            assert isinstance(stream, faust.Stream)  # faust.StreamT lacks take_events; what an agent gets has it
            async for events in stream.take_events(group, within=within):
                # The synthesis group owns dead-lettering of request records; one copy is enough.
                requests, _ = await decode_group(events, ctx.codecs.request, None)
                await projector.on_requests(requests)
                yield None

        _watch_progress(app, ctx, consumer_group(ctx, role), [cat.audio.name, *(spec.name for spec in cat.request_topics())],
                        progress)
    return app


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
        await monitor.check()

    @app.task
    async def prime_progress() -> None:
        # Not a consumer: the topics' ids as they are at start, the baseline that tells a broker restarted empty apart.
        while not await monitor.prime():
            await asyncio.sleep(ctx.settings.worker.progress_check_seconds)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # sent once the consumer has stopped
    async def close_progress_reader(sender: Any, **_: Any) -> None:
        await asyncio.to_thread(monitor.close)


def _wire_synthesis(app: FetchWaitApp, ctx: WorkerContext, engine: SpeechEngine, requests: Any, audio: Any,
                    send_dead_letter: Callable[[Any, str, DecodeError], Awaitable[Any]], segments: Any = None,
                    progress: ProgressMetrics | None = None) -> None:
    """The synthesis agent: a :class:`SynthesisLoop` over the request topic, plus its metrics and drain hook."""
    s = ctx.settings
    synth = Synthesizer(engine, ctx.codecs, ctx.store, s.storage, s.synthesis, ctx.jobs, cache=ctx.cache)
    metrics = SynthesisMetrics()
    policy = BatchPolicy(s.worker.max_batch, s.worker.window_seconds, max(s.worker.batch_lookahead, s.worker.max_batch),
                         bulk_delay=s.worker.bulk_delay_seconds)
    # A batch engine gets one batch of max_batch rows running and one forming; a native one keeps its own slots.
    slots = continuous(engine, s.worker.max_batch)
    running: list[SynthesisLoop[Any]] = []
    finished = asyncio.Event()

    async def publish(results: list[SynthesisResultEvent]) -> None:
        traced = [dataclasses.replace(r, trace_parent=record_span(
                      "voicenote.synthesis", r.trace_parent, seconds=(r.batch_wait_ms + r.engine_ms) / 1000,
                      attributes={"voicenote.job_id": r.job_id, "voicenote.status": r.status,
                                  "voicenote.batch_size": r.batch_size}))
                  for r in results]
        # Queue every record with the producer first, then wait for the broker's acknowledgements together.
        sent = [await audio.send(key=r.job_id.encode(), value=ctx.codecs.result.encode_event(r)) for r in traced]
        await asyncio.gather(*sent)

    async def publish_segment(segment: SpeechSegment) -> None:
        # Queued in order on one partition (keyed by job_id), not awaited to the broker: the result that
        # follows is what the job's at-least-once rests on; a segment lost in delivery ends that one stream
        # (the API sees the gap), never the job.
        await segments.send(key=segment.job_id.encode(), value=ctx.codecs.segment.encode_event(segment))

    async def dead_letter(event: Any, refused: Refused) -> None:
        await (await send_dead_letter(event, "synthesis", DecodeError(refused.reason, refused.message)))

    @app.agent(requests, name="synthesis", supervisor_strategy=CrashingSupervisor)
    async def synthesis_agent(stream: faust.StreamT[bytes]) -> None:
        assert isinstance(stream, faust.Stream)  # faust.StreamT lacks noack; what an agent gets has it
        manual = stream.noack()
        in_order: InOrderAcks[Any] = InOrderAcks(lambda event: event.message.tp)

        async def ack(event: Any) -> None:
            for released in in_order.done(event):
                await manual.ack(released)

        async def source() -> AsyncIterator[tuple[Any, bytes | None]]:
            async for event in manual.events():
                in_order.register(event)
                yield event, event.value

        loop: SynthesisLoop[Any] = SynthesisLoop(synth, policy, engine=slots, publish=publish, dead_letter=dead_letter,
                                                 ack=ack, metrics=metrics, intake_size=s.synthesis.intake_size,
                                                 publish_segment=publish_segment if segments is not None else None)
        running.append(loop)
        try:
            await loop.run(source())
        finally:
            finished.set()
        await asyncio.Event().wait()  # drained: idle until the worker stops the agent

    async def drain() -> None:
        for loop in running:
            await loop.drain()
        if running:
            await finished.wait()
        await asyncio.to_thread(slots.close)  # idle by now: the loop waited for every row it submitted
        await app.consumer.commit()
        log.info("synthesis drained: rows in the engine published and committed")

    app.drain_hook = drain

    @app.task
    async def advertise() -> None:
        # Not a consumer: a missed advert only leaves GET /v1/audio/voices without this engine for a while.
        client = redis_client(s.redis, socket_connect_timeout=2, socket_timeout=5)
        family = family_of(s.engine.kind)
        try:
            while True:
                try:
                    await publish_advert(client, s.redis.key_prefix, family, engine=engine.name, model_version=engine.model_version,
                                         sample_rate=engine.sample_rate, voices=engine.voices())
                except JobStoreError as exc:
                    log.warning("%s; retrying in %.0fs", exc, ADVERT_INTERVAL_SECONDS)
                await asyncio.sleep(ADVERT_INTERVAL_SECONDS)
        finally:
            await client.aclose()

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body = metrics.render() + (progress.render() if progress is not None else b"") + generate_latest(CACHE_REGISTRY)
        return web.bytes(body, content_type="text/plain; version=0.0.4")

    @app.timer(s.synthesis.lag_interval_seconds)
    async def sample_lag() -> None:
        metrics.consumer_lag.set(await faust_consumer_lag(app))
