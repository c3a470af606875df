"""Pure contract rules: job status transitions, request validation, object keys, topic catalog."""

from __future__ import annotations

import pytest

from schemas.status import JobStatus
from schemas.topics import build_catalog
from schemas.validation import request_problems
from voicenote.storage.base import audio_key, claim_key


def test_ranks_order_the_states_and_tie_the_terminal_ones() -> None:
    # The job store moves a job only to a strictly higher rank (tests/integration/test_jobstore.py runs
    # that rule in Redis); these ranks are what make it "forward only, first terminal state wins".
    terminal = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
    assert 0 < JobStatus.queued.rank < JobStatus.running.rank < min(s.rank for s in terminal)
    assert len({s.rank for s in terminal}) == 1
    assert [s for s in JobStatus if s.terminal] == list(terminal)


def test_valid_request_has_no_problems() -> None:
    assert request_problems({"job_id": "job_1", "text": "hi", "format": "wav", "speed": 1.0, "priority": "batch"}) == []


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"job_id": "has space"}, "job_id"),
        ({"text": "   "}, "text must not be empty"),
        ({"text": "x" * 4097}, "maximum is 4096"),
        ({"format": "ogg"}, "format must be one of"),
        ({"speed": 9.0}, "speed must be between"),
        ({"priority": "urgent"}, "priority"),
    ],
)
def test_each_invalid_field_is_named(change: dict, fragment: str) -> None:
    record = {"job_id": "job_1", "text": "hi", "format": "wav", "speed": 1.0, "priority": "batch", **change}
    assert any(fragment in p for p in request_problems(record))


def test_audio_keys_are_deterministic_sharded_and_safe() -> None:
    assert audio_key("audio/", "job_abc12", "wav") == "audio/12/job_abc12.wav"
    assert audio_key("audio/", "job_abc12", "wav") == audio_key("audio/", "job_abc12", "wav")
    assert claim_key("audio/", "job_abc12") == "audio/claims/12/job_abc12.wav"
    with pytest.raises(ValueError):
        audio_key("audio/", "../etc/passwd", "wav")


def test_catalog_names_are_versioned_and_request_topic_has_24_partitions_by_default() -> None:
    catalog = build_catalog()
    assert catalog.requests.partitions == 24
    assert all(spec.name.startswith("voicenote.") and spec.name.endswith(".v1") for spec in catalog.all())
    assert len({spec.name for spec in catalog.all()}) == len(catalog.all())
    assert catalog.requests.config()["cleanup.policy"] == "delete"
    prefixed = build_catalog(prefix="t1.")
    assert prefixed.requests.name == "t1.voicenote.requests.v1"


def test_webhook_delivery_outcomes_have_a_topic_kept_as_long_as_the_completions() -> None:
    catalog = build_catalog(prefix="t1.")
    deliveries = catalog.webhook_deliveries
    assert deliveries is not None and deliveries in catalog.all()
    assert deliveries.name == "t1.voicenote.webhooks.deliveries.v1" and deliveries.event == "WebhookDelivery"
    # The rebuild restores a job's webhook state only while its outcomes are retained: at least as long as the job.
    assert deliveries.retention_ms >= catalog.completions.retention_ms
    assert deliveries.partitions == catalog.completions.partitions
