"""One job, traced: spans from the API, synthesis and completion processes land in one trace.

The processes write their spans with the OpenTelemetry SDK's file exporter (JSON lines); the workers
log JSON lines. ``VOICENOTE_TRACE_SAMPLE`` names a file to copy the job's spans to (docs/trace-one-job.jsonl
was made so).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.stack import Stack

pytestmark = pytest.mark.e2e


def _spans(path: Path, job_id: str) -> list[dict]:
    if not path.exists():
        return []
    spans = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [s for s in spans if s["attributes"].get("voicenote.job_id") == job_id]


def test_one_job_is_one_trace_across_the_api_and_the_workers(stack: Stack, tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    stack.extra_env.update({"VOICENOTE_TRACING__EXPORTER": "file", "VOICENOTE_TRACING__FILE": str(spans_file),
                            "VOICENOTE_LOG__FORMAT": "json"})
    stack.start_worker("synthesis")
    stack.start_worker("completion")
    stack.start_api()
    resp = httpx.post(f"{stack.base_url}/v1/audio/speech/async", json={"input": "Traced from end to end.", "response_format": "wav"},
                      timeout=10)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    assert stack.wait_job(job_id)["status"] == "succeeded"

    deadline = time.monotonic() + 30  # the exporters flush every half second
    found: dict[str, dict] = {}
    wanted = {"voicenote.api.publish", "voicenote.synthesis", "voicenote.completion", "voicenote.engine.batch",
              "voicenote.storage.upload", "voicenote.redis.complete"}
    while time.monotonic() < deadline and set(found) != wanted:
        found = {s["name"]: s for s in _spans(spans_file, job_id)}
        time.sleep(0.2)
    assert set(found) == wanted, found
    assert {s["resource"]["attributes"]["service.name"] for s in found.values()} == {
        "voicenote-api", "voicenote-synthesis", "voicenote-completion"}
    assert len({s["context"]["trace_id"] for s in found.values()}) == 1
    assert found["voicenote.synthesis"]["parent_id"] == found["voicenote.api.publish"]["context"]["span_id"]
    assert found["voicenote.completion"]["parent_id"] == found["voicenote.synthesis"]["context"]["span_id"]
    # The work itself, as it happened: the engine batch under the request, the upload and the Redis write after it.
    assert found["voicenote.engine.batch"]["parent_id"] == found["voicenote.api.publish"]["context"]["span_id"]
    assert found["voicenote.storage.upload"]["parent_id"] == found["voicenote.synthesis"]["context"]["span_id"]
    assert found["voicenote.redis.complete"]["parent_id"] == found["voicenote.completion"]["context"]["span_id"]

    for process in ("worker-completion", "api"):
        lines = [line for line in stack.log(process).splitlines() if line.strip()]
        assert lines and all(json.loads(line)["level"] for line in lines), process
    # The API span's own parent is the HTTP request's server span (FastAPI records those itself).
    trace_id = found["voicenote.api.publish"]["context"]["trace_id"]
    whole = [json.loads(line) for line in spans_file.read_text().splitlines() if line.strip()]
    whole = sorted((s for s in whole if s["context"]["trace_id"] == trace_id), key=lambda s: s["start_time"])
    root = [s for s in whole if s["parent_id"] is None]
    assert len(root) == 1 and root[0]["kind"] == "SpanKind.SERVER", [s["name"] for s in root]
    if os.environ.get("VOICENOTE_TRACE_SAMPLE"):
        Path(os.environ["VOICENOTE_TRACE_SAMPLE"]).write_text("".join(json.dumps(s) + "\n" for s in whole))
