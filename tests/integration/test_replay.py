"""Replay and dead-letter redrive against the real broker."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from ops.replay import Range, read_range, redrive_dead_letters, replay_requests
from schemas.codec import Codecs
from schemas.topics import build_catalog
from voicenote.kafka import client_config, ensure_topics
from voicenote.settings import Settings

pytestmark = pytest.mark.integration


def _produce(settings: Settings, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = Producer(client_config(settings.kafka))
    for key, value in values:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0


def test_replay_publishes_filtered_requests_as_new_jobs(settings: Settings) -> None:
    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=2, partitions=1)
    ensure_topics(settings.kafka, catalog.all())
    codecs = Codecs()
    requests = [{"job_id": f"job_{i}", "created_at": 1, "text": f"note {i}", "voice": "alloy" if i % 2 else "echo"} for i in range(6)]
    _produce(settings, catalog.requests.name, [(r["job_id"].encode(), codecs.request.encode(r)) for r in requests] + [(b"x", b"junk")])

    dry = replay_requests(settings.kafka, catalog.requests.name, Range(), {"voice": "alloy"}, new_job_id=lambda: "unused", dry_run=True)
    assert dry.as_dict() == {"read": 7, "matched": 3, "published": 0, "undecodable": 1}

    ids = iter(f"replayed_{i}" for i in range(10))
    report = replay_requests(settings.kafka, catalog.requests.name, Range(), {"voice": "alloy"}, new_job_id=lambda: next(ids))
    assert report.published == 3
    after = [codecs.request.decode(m.value()) for m in read_range(settings.kafka, catalog.requests.name, Range())
             if m.value() != b"junk"]
    replayed = [r for r in after if r["job_id"].startswith("replayed_")]
    assert sorted(r["attributes"]["replay_of"] for r in replayed) == ["job_1", "job_3", "job_5"]
    assert {r["text"] for r in replayed} == {"note 1", "note 3", "note 5"}


def test_offset_and_time_ranges_bound_the_read(settings: Settings) -> None:
    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=1, partitions=1)
    ensure_topics(settings.kafka, [catalog.requests])
    _produce(settings, catalog.requests.name, [(b"k", f"v{i}".encode()) for i in range(5)])
    middle = [m.value() for m in read_range(settings.kafka, catalog.requests.name, Range(start_offset=1, end_offset=3))]
    assert middle == [b"v1", b"v2"]
    later = int(time.time() * 1000) + 60_000
    assert list(read_range(settings.kafka, catalog.requests.name, Range(start_ms=later))) == []


def test_redrive_sends_original_bytes_back_to_their_topic(settings: Settings) -> None:
    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=1, partitions=1)
    ensure_topics(settings.kafka, catalog.all())
    codecs = Codecs()
    fixed = codecs.request.encode({"job_id": "job_r", "created_at": 1, "text": "hello"})
    letters = [
        {"source_topic": catalog.requests.name, "source_partition": 0, "source_offset": 7, "key": b"job_r", "value": fixed,
         "consumer": "synthesis", "error_type": "unknown_schema", "error_message": "m", "failed_at": 1},
        {"source_topic": catalog.requests.name, "source_partition": 0, "source_offset": 8, "key": None, "value": b"junk",
         "consumer": "synthesis", "error_type": "undecodable", "error_message": "m", "failed_at": 1},
    ]
    _produce(settings, catalog.dead_letter.name, [(b"", codecs.dead_letter.encode(d)) for d in letters])
    report = redrive_dead_letters(settings.kafka, catalog.dead_letter.name, group_id=f"{settings.worker.group_id}-redrive",
                                  error_type="unknown_schema")
    assert (report.read, report.matched, report.published) == (2, 1, 1)
    back = list(read_range(settings.kafka, catalog.requests.name, Range()))
    assert [m.value() for m in back] == [fixed]
    assert dict(back[0].headers())["voicenote-redrive-of"] == f"{catalog.requests.name}:0:7".encode()
