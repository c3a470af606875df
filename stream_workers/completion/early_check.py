"""No job silent for long (issue 22, item 3): overdue jobs re-examined against the topics, well before the watchdog.

The stuck-job watchdog (stream_workers/completion/watchdog.py) ends a job only after ``worker.stuck_after_seconds`` (2 h).
Every ``worker.watchdog_interval_seconds`` the completion worker also looks at the jobs still indexed (queued or
running) for longer than ``max(estimate * watchdog.early_check_factor, watchdog.early_check_floor_seconds)``, where
the estimate is the ``estimated_seconds`` the API answered (kept on the job record; without one, the floor alone).
For each it reads the facts from the topics (:func:`topic_facts`) and :func:`decide` says what to do:

- a completion for it is on the completion topic: project it (``reprojected``);
- a result for it is on the audio topic but was never applied (Tansu 0.6's memory storage acknowledged results under
  offsets the completion group had already committed past): complete it from that result exactly as the storage
  agent does (``reapplied``);
- its request is still at or past the synthesis group's committed offset: it waits behind lag or is being
  synthesized; it is left alone (``waiting``);
- its request was consumed (the synthesis group commits a request only once its result is on the broker) and no
  result exists: the result was lost; the job ends ``failed`` with ``result_lost`` through a completion event
  (``failed``);
- its request is not on the request topics at all: left to :class:`~stream_workers.completion.watchdog.LostRequests` and the
  watchdog (``request_missing``).

Every decision is logged with the job id and reason and counted in ``voicenote_jobs_overdue{outcome}``.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from schemas.codec import Codecs
from schemas.errors import DecodeError
from schemas.events import JobCompletion, SynthesisResult
from schemas.validation import valid_job_id
from stream_workers.completion.status import StatusProjector
from stream_workers.completion.watchdog import RECORD_FIELDS, failed_completion, finished_record
from voicenote.jobstore import JobStore
from voicenote.kafka import committed_offsets, read_to_end
from voicenote.settings import KafkaSettings

log = logging.getLogger(__name__)

RESULT_LOST_CODE = "result_lost"
ESTIMATE_FIELD = "estimated_seconds"


class Outcome(enum.StrEnum):
    reprojected = "reprojected"
    reapplied = "reapplied"
    waiting = "waiting"
    failed = "failed"
    request_missing = "request_missing"


@dataclass(frozen=True)
class Facts:
    """What the topics say about one overdue job."""
    completion: JobCompletion | None = None  # its completion event, if one is on the completion topic
    result: SynthesisResult | None = None  # its first result on the audio topic
    request_found: bool = False  # its request is on a request topic
    consumed: bool = False  # that request is below the synthesis group's committed offset on its partition


def decide(facts: Facts) -> Outcome:
    """What to do with an overdue job, from the facts alone (no I/O)."""
    if facts.completion is not None:
        return Outcome.reprojected
    if facts.result is not None:
        return Outcome.reapplied
    if not facts.request_found:
        return Outcome.request_missing
    if not facts.consumed:
        return Outcome.waiting
    return Outcome.failed


def overdue_after(record: Mapping[str, str] | None, factor: float, floor: float) -> float:
    """Seconds after submission past which a job is overdue: max(estimate * factor, floor)."""
    try:
        estimate = float((record or {}).get(ESTIMATE_FIELD) or 0.0)
    except ValueError:
        estimate = 0.0
    return max(estimate * factor, floor)


def topic_facts(kafka: KafkaSettings, codecs: Codecs, job_ids: Iterable[str], *,
                request_topics: Mapping[str, str], audio_topic: str, completion_topic: str,
                timeout: float = 60.0) -> dict[str, Facts]:
    """Reads the facts of ``job_ids`` from the topics (blocking: run it in a thread).

    ``request_topics``: each request topic and the synthesis group that consumes it. Every topic is read to its end
    as it was when reading began (voicenote.kafka.read_to_end); the audio topic's records are decoded only when keyed
    by one of the jobs (or unkeyed)."""
    wanted = set(job_ids)
    completions: dict[str, JobCompletion] = {}
    results: dict[str, SynthesisResult] = {}
    requests: dict[str, tuple[str, int, int]] = {}
    for msg in read_to_end(kafka, completion_topic, timeout=timeout, group_prefix="voicenote-early-check", missing_ok=True):
        key, value = msg.key(), msg.value()
        if value is None or (key is not None and key.decode(errors="replace") not in wanted):
            continue
        try:
            completion = codecs.completion.decode_event(value)
        except DecodeError:
            continue
        if completion.job_id in wanted:
            completions.setdefault(completion.job_id, completion)
    for msg in read_to_end(kafka, audio_topic, timeout=timeout, group_prefix="voicenote-early-check", missing_ok=True):
        key, value = msg.key(), msg.value()
        if value is None or (key is not None and key.decode(errors="replace") not in wanted):
            continue
        try:
            result = codecs.result.decode_event(value)
        except DecodeError:
            continue
        if result.job_id in wanted:
            results.setdefault(result.job_id, result)
    committed: dict[tuple[str, int], int] = {}
    for topic, group in request_topics.items():
        for msg in read_to_end(kafka, topic, timeout=timeout, group_prefix="voicenote-early-check", missing_ok=True):
            key = msg.key()
            job_id = key.decode(errors="replace") if key else None
            if job_id is None and msg.value() is not None:
                try:
                    job_id = codecs.request.decode_event(msg.value()).job_id
                except DecodeError:
                    continue
            if job_id in wanted:
                requests[job_id] = (topic, msg.partition() or 0, msg.offset() or 0)  # the latest copy counts
        partitions = sorted({p for t, p, _ in requests.values() if t == topic})
        if partitions:
            committed.update({(topic, p): o for p, o in committed_offsets(kafka, group, topic, partitions, timeout=timeout).items()})
    facts: dict[str, Facts] = {}
    for job_id in wanted:
        where = requests.get(job_id)
        consumed = where is not None and where[2] < committed.get((where[0], where[1]), -1)
        facts[job_id] = Facts(completion=completions.get(job_id), result=results.get(job_id),
                              request_found=where is not None, consumed=consumed)
    return facts


class EarlyCheckMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.overdue = Counter("voicenote_jobs_overdue", "Overdue jobs re-examined against the topics, by outcome.",
                               ["outcome"], registry=self.registry)


class EarlyCheck:
    """Re-examines the jobs overdue against their estimate and acts on :func:`decide`'s outcome.

    ``facts``: the topic facts of some job ids (``topic_facts`` in a thread). ``reapply``: completes a job from its
    result exactly as the storage agent does (store the audio, publish the completion, project it). ``emit``:
    publishes completion events."""

    def __init__(self, jobs: JobStore, projector: StatusProjector,
                 emit: Callable[[Sequence[JobCompletion]], Awaitable[None]],
                 facts: Callable[[list[str]], Awaitable[dict[str, Facts]]],
                 reapply: Callable[[Sequence[SynthesisResult]], Awaitable[None]], *,
                 factor: float, floor: float, stuck_after: float, metrics: EarlyCheckMetrics | None = None,
                 batch: int = 500, clock: Callable[[], float] = time.time) -> None:
        self._jobs, self._projector, self._emit, self._facts, self._reapply = jobs, projector, emit, facts, reapply
        self._factor, self._floor, self._stuck_after, self._batch, self._clock = factor, floor, stuck_after, batch, clock
        self.metrics = metrics or EarlyCheckMetrics()

    async def sweep(self) -> dict[str, Outcome]:
        """One round: the outcome of each overdue job examined."""
        now_ms = int(self._clock() * 1000)
        due = [j for j in await self._jobs.pending_before(now_ms - int(self._floor * 1000), self._batch) if valid_job_id(j)]
        if not due:
            return {}
        records = await self._jobs.get_fields_many(due, (*RECORD_FIELDS, ESTIMATE_FIELD))
        overdue: dict[str, dict[str, str] | None] = {}
        for job_id, record in zip(due, records, strict=True):
            created = int((record or {}).get("created_at") or 0)
            if finished_record(record) or (created and now_ms - created < overdue_after(record, self._factor, self._floor) * 1000):
                continue  # finished (the watchdog unindexes it) or not overdue yet
            if created and now_ms - created >= self._stuck_after * 1000:
                continue  # the watchdog's
            overdue[job_id] = record
        if not overdue:
            return {}
        facts = await self._facts(list(overdue))
        outcomes = {job_id: decide(facts.get(job_id, Facts())) for job_id in overdue}
        reproject = [f.completion for j, f in facts.items() if outcomes.get(j) is Outcome.reprojected and f.completion]
        reapply = [f.result for j, f in facts.items() if outcomes.get(j) is Outcome.reapplied and f.result]
        lost = [failed_completion(j, overdue[j], now_ms, RESULT_LOST_CODE,
                                  "the job's request was consumed but its result never reached the broker (lost); "
                                  "submit it again")
                for j, o in outcomes.items() if o is Outcome.failed]
        if reproject:
            await self._projector.on_completions(reproject)
        if reapply:
            fresh = await self._projector.already_completed([r.job_id for r in reapply])
            await self._reapply([r for r in reapply if r.job_id not in fresh])
        if lost:
            await self._emit(lost)  # the events first, as the watchdog does
            await self._projector.on_completions(lost)
        for job_id, outcome in outcomes.items():
            self.metrics.overdue.labels(outcome.value).inc()
            level = logging.INFO if outcome is Outcome.waiting else logging.WARNING
            log.log(level, "overdue job %s (queued %.0fs ago): %s", job_id,
                    (now_ms - int((overdue[job_id] or {}).get("created_at") or now_ms)) / 1000, outcome.value)
        return outcomes
