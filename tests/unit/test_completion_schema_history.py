"""Events written with the v1 schemas (before audio_url, cache_hit, cache_key, use_cache, and the word timestamps of
issue 23) still decode."""

from __future__ import annotations

import io

import fastavro
import pytest

from schemas.codec import SINGLE_OBJECT_MAGIC, Codecs, history

V1_RECORDS = {
    "SynthesisRequest": {"job_id": "job_old1", "created_at": 1_700_000_000_000, "text": "hi"},
    "SynthesisResult": {"job_id": "job_old1", "status": "succeeded", "created_at": 1_700_000_000_000,
                        "synthesized_at": 1_700_000_000_500},
    "JobCompletion": {"job_id": "job_old1", "status": "succeeded", "created_at": 1_700_000_000_000,
                      "completed_at": 1_700_000_001_000},
}


def _encode_v1(name: str, record: dict) -> bytes:
    v1 = history(name)[0]
    buf = io.BytesIO()
    buf.write(SINGLE_OBJECT_MAGIC + v1.fingerprint)
    fastavro.schemaless_writer(buf, v1.parsed, record)
    return buf.getvalue()


@pytest.mark.parametrize(("name", "attr", "defaults"), [
    ("SynthesisRequest", "request", {"use_cache": True}),
    ("SynthesisResult", "result", {"cache_key": None, "cache_hit": False, "word_timestamps": None,
                                   "timestamps_unavailable": None}),
    ("JobCompletion", "completion", {"audio_url": None, "cache_hit": False, "word_timestamps": None,
                                     "timestamps_key": None, "timestamps_unavailable": None}),
])
def test_v1_event_decodes_with_new_fields_defaulted(name: str, attr: str, defaults: dict) -> None:
    codec = getattr(Codecs(), attr)
    assert history(name)[0].fingerprint != codec.schema.fingerprint
    decoded = codec.decode(_encode_v1(name, V1_RECORDS[name]))
    assert decoded["job_id"] == "job_old1"
    for field, value in defaults.items():
        assert decoded[field] == value
