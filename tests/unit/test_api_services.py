"""The API's services: routes reach Kafka and Redis only through a service, and the services' pure helpers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from producer_api import routes
from producer_api.errors import ApiError, envelope
from producer_api.services.common import IGNORED_HEADER, Links, audio_headers, ignored_header, new_batch_id
from producer_api.services.sync import answering_accepted
from schemas.validation import JOB_ID
from voicenote.errors import JobStoreError, StorageError

ROUTES = sorted(Path(routes.__file__).parent.glob("*.py"))
# What a handler would need to write Kafka or Redis inline.
CLIENTS = ("redis", "aiokafka", "confluent_kafka", "voicenote.kafka", "voicenote.jobstore", "voicenote.storage",
           "producer_api.idempotency", "producer_api.ratelimit", "producer_api.waiter")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", ROUTES, ids=lambda p: p.name)
def test_routes_import_no_client(path: Path) -> None:
    found = {name for name in _imports(path) for client in CLIENTS if name == client or name.startswith(client + ".")}
    assert found == set(), f"{path.name} reaches past the services: {sorted(found)}"


def test_routes_reach_app_state_only_for_auth_and_metrics() -> None:
    # The services come in as dependencies (producer_api/deps.py), never from app.state in a handler.
    for path in ROUTES:
        for line in path.read_text().splitlines():
            if "state." in line:
                assert any(ok in line for ok in ("state.metrics", "state.estimator")), f"{path.name}: {line}"


def test_links_strip_one_trailing_slash_of_the_base() -> None:
    links = Links("https://api.example.com/")
    assert links.job("job_a") == "https://api.example.com/v1/jobs/job_a"
    assert links.audio("job_a") == "https://api.example.com/v1/jobs/job_a/audio"
    assert links.batch("batch_b") == "https://api.example.com/v1/batches/batch_b"


def test_pcm_answers_carry_their_rate_and_other_formats_only_the_job_id() -> None:
    assert audio_headers("job_a", "mp3", {"sample_rate": "24000"}, 22050) == {"X-Job-Id": "job_a"}
    stored = audio_headers("job_a", "pcm", {"sample_rate": "24000"}, 22050)
    assert stored["X-Sample-Rate"] == "24000" and stored["X-Channels"] == "1" and stored["X-Sample-Format"] == "s16le"
    assert audio_headers("job_a", "pcm", {}, 22050)["X-Sample-Rate"] == "22050"  # a record without a rate: the model's


def test_ignored_header_is_absent_when_nothing_is_ignored() -> None:
    assert ignored_header([]) == {}
    assert ignored_header(["seed", "top_p"]) == {IGNORED_HEADER: "seed, top_p"}


def test_batch_ids_are_valid_job_ids_and_distinct() -> None:
    ids = {new_batch_id() for _ in range(200)}
    assert len(ids) == 200 and all(JOB_ID.match(i) and i.startswith("batch_") for i in ids)


@pytest.mark.parametrize(("failure", "status", "code"), [
    (StorageError("the audio store did not answer"), 503, "storage_unavailable"),
    (JobStoreError("No connection available."), 503, "redis_unavailable"),
    (RuntimeError("a bug"), 500, "internal_error"),
])
def test_a_failure_after_acceptance_answers_with_the_job_never_a_bare_retry(failure: Exception, status: int, code: str) -> None:
    # Issue 25, defect 3: the sync paths (SyncSpeech.speak, streaming) answer this way once the request is on the topic.
    links = Links("https://api.example.com")
    with pytest.raises(ApiError) as caught, answering_accepted("job_a", links, ignored_header(["seed"])):
        raise failure
    answer = caught.value
    assert (answer.status, answer.code, answer.job_id) == (status, code, "job_a")
    assert "job_a" in answer.message and "https://api.example.com/v1/jobs/job_a" in answer.message
    assert answer.headers == {IGNORED_HEADER: "seed", "X-Job-Id": "job_a", "Location": "https://api.example.com/v1/jobs/job_a",
                              "x-should-retry": "false"}
    assert answer.__cause__ is failure
    assert envelope(answer.message, answer.type, answer.param, answer.code, answer.job_id)["error"]["job_id"] == "job_a"  # type: ignore[index]


def test_the_job_outcome_passes_through_the_accepted_guard_unchanged() -> None:
    timeout = ApiError(504, "job job_a is not finished", code="timeout", job_id="job_a")
    with pytest.raises(ApiError) as caught, answering_accepted("job_a", Links("https://api.example.com")):
        raise timeout
    assert caught.value is timeout
