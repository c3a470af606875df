"""Batch records and Idempotency-Key answers rebuilt from request events, webhook states from delivery outcomes
(stream_workers/completion/restoration.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.codec import Codecs
from schemas.events import BATCH_INDEX_ATTRIBUTE, BATCH_SIZE_ATTRIBUTE, REPLAY_OF_ATTRIBUTE, SynthesisRequest, WebhookDelivery
from stream_workers.completion.restoration import batch_records, describes_api_records, idempotency_answers, webhook_states
from voicenote.idempotency import (
    ASYNC,
    BATCH,
    ESTIMATE_ATTRIBUTE,
    SPEECH,
    IdempotencyMark,
    done_value,
    key_digest,
    mark_attributes,
    record_key,
)
from voicenote.jobstore import BatchRecord, WebhookState
from voicenote.links import Links

NOW = 1_800_000_000_000
LINKS = Links("https://api.example/")
TTL = 24 * 3600


def request(job_id: str, *, created_at: int = NOW - 1000, batch_id: str | None = None, index: int | None = None,
            size: int | None = None, owner: str | None = "acme", **attributes: str) -> SynthesisRequest:
    attrs = dict(attributes)
    if owner is not None:
        attrs["owner"] = owner
    if index is not None:
        attrs[BATCH_INDEX_ATTRIBUTE] = str(index)
    if size is not None:
        attrs[BATCH_SIZE_ATTRIBUTE] = str(size)
    event = SynthesisRequest(job_id=job_id, created_at=created_at, text="hello", voice="joe", format="wav", speed=1.0,
                             priority="batch", batch_id=batch_id, attributes=attrs)
    return Codecs().request.decode_event(Codecs().request.encode_event(event))  # as the rebuild reads it back


def batch(batch_id: str, job_ids: list[str], *, created_at: int = NOW - 1000, owner: str = "acme",
          **attributes: str) -> list[SynthesisRequest]:
    return [request(job_id, created_at=created_at, batch_id=batch_id, index=i, size=len(job_ids), owner=owner, **attributes)
            for i, job_id in enumerate(job_ids)]


def mark(key: str, endpoint: str, fp: str = "fp1") -> IdempotencyMark:
    return IdempotencyMark(key_sha256=key_digest(key), fingerprint=fp, endpoint=endpoint)


# -- batch records ------------------------------------------------------------------------------------------


def test_a_batch_is_rebuilt_in_request_order_whatever_order_its_items_come_back_in() -> None:
    items = batch("batch_a", ["job_c", "job_a", "job_b"])
    mixed = [items[2], items[0], items[1], items[0]]  # partitions interleave; a redelivery repeats one
    found = batch_records(mixed)
    assert found.incomplete == []
    assert [b.record for b in found.restored] == [BatchRecord("batch_a", "acme", NOW - 1000, ("job_c", "job_a", "job_b"))]
    assert [r.job_id for r in found.restored[0].items] == ["job_c", "job_a", "job_b"]


def test_the_batch_time_is_its_earliest_item_and_the_owner_its_items() -> None:
    items = [request("job_1", created_at=NOW - 50, batch_id="batch_t", index=0, size=2, owner="beta"),
             request("job_2", created_at=NOW - 70, batch_id="batch_t", index=1, size=2, owner="beta")]
    (restored,) = batch_records(items).restored
    assert (restored.record.created_at, restored.record.owner) == (NOW - 70, "beta")


@pytest.mark.parametrize("case, items", [
    ("an item missing (abandoned half-published)", batch("batch_x", ["job_1", "job_2", "job_3"])[:2]),
    ("two jobs at one position", [*batch("batch_x", ["job_1", "job_2"]), request("job_9", batch_id="batch_x", index=1, size=2)]),
    ("sizes disagree", [request("job_1", batch_id="batch_x", index=0, size=2), request("job_2", batch_id="batch_x", index=1, size=3)]),
    ("owners disagree", [request("job_1", batch_id="batch_x", index=0, size=2, owner="a"),
                         request("job_2", batch_id="batch_x", index=1, size=2, owner="b")]),
    ("no positions (published before they existed, or directly)", [request("job_1", batch_id="batch_x"), request("job_2", batch_id="batch_x")]),
    ("no owner", batch("batch_x", ["job_1"], owner="")),
    ("a position outside the batch", [request("job_1", batch_id="batch_x", index=1, size=1)]),
])
def test_a_batch_that_is_not_whole_and_consistent_is_not_restored(case: str, items: list[SynthesisRequest]) -> None:
    found = batch_records(items)
    assert found.restored == [], case
    assert found.incomplete == ["batch_x"], case


def test_replayed_requests_are_not_items_of_the_batch_they_came_from() -> None:
    items = batch("batch_r", ["job_1", "job_2"])
    replayed = request("job_new", batch_id="batch_r", index=0, size=2, **{REPLAY_OF_ATTRIBUTE: "job_1"})
    (restored,) = batch_records([*items, replayed]).restored
    assert restored.record.job_ids == ("job_1", "job_2")


def test_requests_outside_batches_make_no_batch() -> None:
    found = batch_records([request("job_1"), request("job_2")])
    assert (found.restored, found.incomplete) == ([], [])


# -- Idempotency-Key answers --------------------------------------------------------------------------------


def test_an_async_answer_is_rebuilt_as_the_api_gave_it() -> None:
    m = mark("order-17", ASYNC)
    r = request("job_as", ignored_params="instructions,seed", **m.attributes(estimated_seconds=2.4000000000000004))
    (kept,) = idempotency_answers([r], [], ttl_seconds=TTL, now_ms=NOW, links=LINKS).kept
    assert (kept.owner, kept.key_sha256, kept.fingerprint) == ("acme", key_digest("order-17"), "fp1")
    assert kept.response == {"job_id": "job_as", "status_url": "https://api.example/v1/jobs/job_as",
                             "estimated_seconds": 2.4000000000000004, "ignored_params": ["instructions", "seed"]}
    assert kept.expires_at == r.created_at + TTL * 1000


def test_a_sync_answer_is_the_job_id() -> None:
    r = request("job_sy", **mark("k", SPEECH).attributes())
    (kept,) = idempotency_answers([r], [], ttl_seconds=TTL, now_ms=NOW, links=LINKS).kept
    assert kept.response == {"job_id": "job_sy"}


def test_a_batch_answer_needs_the_whole_batch_and_lists_its_jobs_in_order() -> None:
    m = mark("batch-key", BATCH, fp="fpb")
    items = batch("batch_k", ["job_2", "job_1"], **mark_attributes(m, 7.5))
    items[1] = request("job_1", batch_id="batch_k", index=1, size=2, ignored_params="speed", **mark_attributes(m, 7.5))
    found = batch_records(items)
    (kept,) = idempotency_answers(reversed(items), found.restored, ttl_seconds=TTL, now_ms=NOW, links=LINKS).kept
    assert kept.fingerprint == "fpb"
    assert kept.response == {"batch_id": "batch_k", "job_ids": ["job_2", "job_1"], "status_url": "https://api.example/v1/batches/batch_k",
                             "estimated_seconds": 7.5, "ignored_params": {"job_1": ["speed"]}}
    # Half a batch: the API released its key (the caller's retry made a new batch), so nothing is restored.
    half = items[:1]
    assert idempotency_answers(half, batch_records(half).restored, ttl_seconds=TTL, now_ms=NOW, links=LINKS).kept == []


def test_expired_answers_are_left_out_and_the_latest_answer_of_a_key_wins() -> None:
    m = mark("again", ASYNC)
    old = request("job_old", created_at=NOW - TTL * 1000 - 1, **m.attributes(1.0))
    first = request("job_first", created_at=NOW - 5000, **m.attributes(1.0))
    second = request("job_second", created_at=NOW - 1000, **m.attributes(1.0))  # the key used again after a loss
    found = idempotency_answers([second, old, first], [], ttl_seconds=TTL, now_ms=NOW, links=LINKS)
    assert [k.response["job_id"] for k in found.kept] == ["job_second"]


def test_keys_are_per_owner_and_unmarked_or_replayed_requests_give_no_answer() -> None:
    m = mark("shared", SPEECH)
    found = idempotency_answers([
        request("job_a", owner="a", **m.attributes()), request("job_b", owner="b", **m.attributes()),
        request("job_plain"), request("job_replay", **{**m.attributes(), REPLAY_OF_ATTRIBUTE: "job_a"}),
        request("job_ownerless", owner=None, **m.attributes()),
    ], [], ttl_seconds=TTL, now_ms=NOW, links=LINKS)
    assert sorted((k.owner, k.response["job_id"]) for k in found.kept) == [("a", "job_a"), ("b", "job_b")]


def test_an_answer_that_cannot_be_rebuilt_is_counted_not_guessed() -> None:
    no_estimate = request("job_ne", **mark("k1", ASYNC).attributes())  # the API always sets it for /async
    unknown = request("job_uk", **mark("k2", "speech.other").attributes())
    found = idempotency_answers([no_estimate, unknown], [], ttl_seconds=TTL, now_ms=NOW, links=LINKS)
    assert (found.kept, found.unusable) == ([], 2)


# -- the shared format --------------------------------------------------------------------------------------


def test_the_mark_round_trips_through_event_attributes_without_the_raw_key() -> None:
    m = mark("customer-secret-key", BATCH)
    attributes = mark_attributes(m, 0.1 + 0.2)
    assert "customer-secret-key" not in json.dumps(attributes)
    assert IdempotencyMark.from_attributes(attributes) == m
    assert float(attributes[ESTIMATE_ATTRIBUTE]) == 0.1 + 0.2  # the exact float the answer held
    assert mark_attributes(None, 1.0) == {} and IdempotencyMark.from_attributes({"owner": "x"}) is None


def test_the_record_format() -> None:
    assert record_key("p:", "acme", key_digest("k")) == f"p:idem:acme:{key_digest('k')}"
    held: dict[str, Any] = json.loads(done_value("fp", {"job_id": "job_1"}))
    assert held == {"fp": "fp", "state": "done", "response": {"job_id": "job_1"}}


def test_only_batch_items_and_keyed_requests_are_kept_for_restoring() -> None:
    assert describes_api_records(request("job_b", batch_id="batch_1"))
    assert describes_api_records(request("job_k", **mark("k", SPEECH).attributes()))
    assert not describes_api_records(request("job_plain"))


# -- webhook states --------------------------------------------------------------------------------------------


def outcome(job_id: str, status: str, attempt: int, error: str | None = None) -> WebhookDelivery:
    return WebhookDelivery(job_id=job_id, webhook_id=f"msg_{job_id}", status=status, attempt=attempt, attempted_at=NOW,
                           status_code=200 if status == "delivered" else 500, error=error)


def test_webhook_states_fold_each_jobs_outcomes_by_the_job_stores_rule() -> None:
    outcomes = [
        outcome("job_a", "retrying", 1, "HTTP 500"), outcome("job_b", "delivered", 1),
        outcome("job_a", "retrying", 2, "timeout"), outcome("job_a", "delivered", 3),
        outcome("job_a", "retrying", 2, "timeout"),  # an attempt repeated after a kill: delivered stays
        outcome("job_c", "retrying", 1, "HTTP 500"), outcome("job_c", "failed", 2, "HTTP 500"),
        outcome("job_c", "retrying", 1, "HTTP 500"),  # a redelivered older attempt changes nothing
        outcome("job_d", "refused", 1, "webhook_url host 10.0.0.1 is a private address"),
        outcome("job_e", "failed", 8, "HTTP 502"), outcome("job_e", "delivered", 9),  # redriven, then delivered
    ]
    assert sorted(webhook_states(outcomes), key=lambda s: s.job_id) == [
        WebhookState("job_a", "delivered", 3, ""),
        WebhookState("job_b", "delivered", 1, ""),
        WebhookState("job_c", "failed", 2, "HTTP 500"),
        WebhookState("job_d", "refused", 1, "webhook_url host 10.0.0.1 is a private address"),
        WebhookState("job_e", "delivered", 9, ""),
    ]
    assert webhook_states([]) == []


def test_delivery_outcomes_round_trip_through_their_codec() -> None:
    event = WebhookDelivery(job_id="job_rt", webhook_id="msg_job_rt", status="retrying", attempt=2, attempted_at=NOW,
                            error="timeout", next_attempt_at=NOW + 300_000)
    codec = Codecs().webhook_delivery
    assert codec.decode_event(codec.encode_event(event)) == event
