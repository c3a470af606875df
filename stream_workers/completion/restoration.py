"""What Redis kept beside the job records' status, rebuilt from the events after Redis lost it: batch records and
Idempotency-Key answers (from the request events), and each job's webhook delivery state (from the webhooks worker's
delivery outcomes). The projection rebuild writes them (stream_workers/completion/projection.py).

Pure functions over decoded events.

- A batch record (``GET /v1/batches/{id}``): the API publishes every item of a batch with the batch's id, its
  owner (``attributes.owner``), the batch's creation time, the item's position and the batch's size
  (``attributes.batch_index`` / ``batch_size``). A batch is restored only when every position is there with
  one job id, and the owner and size agree: a batch the API abandoned half-published had no record either.
  Replayed requests (``attributes.replay_of``) are other jobs, not items of the batch.
- An Idempotency-Key answer: a request published under a key carries its mark (voicenote/idempotency.py); the
  answer is rebuilt in the shape its endpoint gave it (the job id; for ``/async`` and batches also the status
  URL, the estimate it answered with and the ignored parameters), valid until the request's time plus
  ``api.idempotency_ttl_seconds``. A batch's answer needs the whole batch. When one key has several answers
  (it was used again after Redis lost the first one), the latest is kept: the one Redis held.
- A job's webhook state (``webhook.status`` / ``attempts`` / ``last_error``): the webhooks worker publishes every
  attempt's outcome (``WebhookDelivery``) before the job record shows it. Folded by the rule the job store applies
  live (``delivered`` is final, the attempt count never goes down), the outcomes of a job give the state Redis held.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.events import (
    BATCH_INDEX_ATTRIBUTE,
    BATCH_SIZE_ATTRIBUTE,
    REPLAY_OF_ATTRIBUTE,
    WEBHOOK_DELIVERED,
    SynthesisRequest,
    WebhookDelivery,
)
from voicenote.idempotency import ASYNC, BATCH, ESTIMATE_ATTRIBUTE, KEY_ATTRIBUTE, SPEECH, IdempotencyMark, KeptAnswer
from voicenote.jobstore import BatchRecord, WebhookState
from voicenote.links import Links

log = logging.getLogger(__name__)

OWNER_ATTRIBUTE = "owner"
IGNORED_ATTRIBUTE = "ignored_params"  # comma-separated (Submission.publish)


def describes_api_records(request: SynthesisRequest) -> bool:
    """Whether ``request`` can contribute to a batch record or an Idempotency-Key answer (the rest need not be kept)."""
    return request.batch_id is not None or KEY_ATTRIBUTE in request.attributes


@dataclass(frozen=True)
class RestoredBatch:
    record: BatchRecord
    items: tuple[SynthesisRequest, ...]  # in the batch request's order


@dataclass
class Batches:
    restored: list[RestoredBatch] = field(default_factory=list)
    # Batch ids seen on requests whose record cannot be rebuilt: items missing (abandoned half-published, or
    # past retention), positions disagreeing, or published without positions (before they existed, or directly).
    incomplete: list[str] = field(default_factory=list)


def _position(request: SynthesisRequest) -> tuple[int, int] | None:
    try:
        index, size = int(request.attributes[BATCH_INDEX_ATTRIBUTE]), int(request.attributes[BATCH_SIZE_ATTRIBUTE])
    except (KeyError, ValueError):
        return None
    return (index, size) if 0 <= index < size else None


def batch_records(requests: Iterable[SynthesisRequest]) -> Batches:
    """The batches whose every item is among ``requests``, each with its record as the API wrote it."""
    items: dict[str, dict[int, SynthesisRequest]] = {}
    sizes: dict[str, set[int]] = {}
    owners: dict[str, set[str]] = {}
    broken: set[str] = set()
    for request in requests:
        batch_id = request.batch_id
        if batch_id is None or REPLAY_OF_ATTRIBUTE in request.attributes:
            continue
        position = _position(request)
        owner = request.attributes.get(OWNER_ATTRIBUTE)
        if position is None or not owner:
            broken.add(batch_id)
            continue
        index, size = position
        held = items.setdefault(batch_id, {}).get(index)
        if held is not None and held.job_id != request.job_id:
            broken.add(batch_id)  # two jobs at one position: not a batch the API made
            continue
        if held is None:  # the same job again (a redelivery) changes nothing
            items[batch_id][index] = request
        sizes.setdefault(batch_id, set()).add(size)
        owners.setdefault(batch_id, set()).add(owner)
    found = Batches()
    for batch_id in sorted(broken | set(items)):
        held_items = items.get(batch_id, {})
        size = next(iter(sizes[batch_id])) if len(sizes.get(batch_id, ())) == 1 else -1
        if batch_id in broken or size < 0 or len(owners[batch_id]) != 1 or len(held_items) != size:
            found.incomplete.append(batch_id)
            continue
        ordered = tuple(held_items[i] for i in range(size))
        record = BatchRecord(batch_id=batch_id, owner=next(iter(owners[batch_id])), created_at=min(r.created_at for r in ordered),
                             job_ids=tuple(r.job_id for r in ordered))
        found.restored.append(RestoredBatch(record, ordered))
    return found


def ignored_params(request: SynthesisRequest) -> list[str]:
    """The request's ``attributes.ignored_params`` as the answer listed them."""
    return [name for name in request.attributes.get(IGNORED_ATTRIBUTE, "").split(",") if name]


def _estimate(request: SynthesisRequest) -> float:
    return float(request.attributes[ESTIMATE_ATTRIBUTE])


def answer(endpoint: str, items: Sequence[SynthesisRequest], links: Links, batch: BatchRecord | None = None) -> dict[str, Any]:
    """The answer ``endpoint`` gave for the request(s) ``items`` (a batch's in order, with its ``batch`` record).

    Raises KeyError or ValueError when the events lack what the answer needs."""
    first = items[0]
    if endpoint == SPEECH:
        return {"job_id": first.job_id}
    if endpoint == ASYNC:
        return {"job_id": first.job_id, "status_url": links.job(first.job_id), "estimated_seconds": _estimate(first),
                "ignored_params": ignored_params(first)}
    if endpoint == BATCH:
        if batch is None:
            raise ValueError("a batch answer needs its batch record")
        return {"batch_id": batch.batch_id, "job_ids": list(batch.job_ids), "status_url": links.batch(batch.batch_id),
                "estimated_seconds": _estimate(first),
                "ignored_params": {r.job_id: ignored_params(r) for r in items if ignored_params(r)}}
    raise ValueError(f"no answer is kept for endpoint {endpoint!r}")


@dataclass
class Answers:
    kept: list[KeptAnswer] = field(default_factory=list)
    unusable: int = 0  # marked requests whose answer cannot be rebuilt (an unknown endpoint, a missing estimate)


def idempotency_answers(requests: Iterable[SynthesisRequest], batches: Iterable[RestoredBatch], *, ttl_seconds: int,
                        now_ms: int, links: Links) -> Answers:
    """The ``done`` Idempotency-Key records still valid at ``now_ms``, one per owner and key (the latest)."""
    by_batch = {b.record.batch_id: b for b in batches}
    latest: dict[tuple[str, str], KeptAnswer] = {}
    found = Answers()
    answered_batches: set[str] = set()
    for request in requests:
        mark = IdempotencyMark.from_attributes(request.attributes)
        owner = request.attributes.get(OWNER_ATTRIBUTE)
        if mark is None or not owner or REPLAY_OF_ATTRIBUTE in request.attributes:
            continue
        expires_at = request.created_at + ttl_seconds * 1000
        if expires_at <= now_ms:
            continue
        items: Sequence[SynthesisRequest] = (request,)
        batch: RestoredBatch | None = None
        if mark.endpoint == BATCH:
            batch = by_batch.get(request.batch_id or "")
            if batch is None or batch.record.batch_id in answered_batches:
                continue  # not whole (its key was released: a retry made a new batch), or answered already
            answered_batches.add(batch.record.batch_id)
            items = batch.items
        try:
            response = answer(mark.endpoint, items, links, batch.record if batch else None)
        except (KeyError, ValueError) as exc:
            found.unusable += 1
            log.warning("cannot restore the Idempotency-Key answer of job %s: %s", request.job_id, exc)
            continue
        kept = KeptAnswer(owner=owner, key_sha256=mark.key_sha256, fingerprint=mark.fingerprint, response=response,
                          created_at=request.created_at, expires_at=expires_at)
        held = latest.get((owner, mark.key_sha256))
        if held is None or kept.created_at > held.created_at:
            latest[(owner, mark.key_sha256)] = kept
    found.kept = list(latest.values())
    return found


def webhook_states(deliveries: Iterable[WebhookDelivery]) -> list[WebhookState]:
    """Each job's webhook state after the outcomes ``deliveries`` (in topic order; one job's are on one partition, in
    order), by the job store's rule: ``delivered`` is final, and an outcome of an earlier attempt than the one held
    changes nothing (a redelivered record, an attempt repeated after a dispatcher was killed)."""
    held: dict[str, WebhookState] = {}
    for outcome in deliveries:
        current = held.get(outcome.job_id)
        if current is not None and (current.status == WEBHOOK_DELIVERED or outcome.attempt < current.attempts):
            continue
        held[outcome.job_id] = WebhookState(outcome.job_id, outcome.status, outcome.attempt, outcome.error or "")
    return list(held.values())
