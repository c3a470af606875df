"""Direct publishers: a job id reused by another request is dead-lettered as ``job_id_conflict`` with
both digests; a request may name its owner; an ownerless job is readable only with the admin scope."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from producer_api.auth import hash_token
from schemas.codec import Codecs
from schemas.events import JobCompletion
from schemas.status import JobStatus
from schemas.validation import request_digest
from stream_workers.completion.status import StatusProjector
from stream_workers.engine.null_engine import NullEngine
from stream_workers.synthesis.synthesizer import Synthesizer
from tests.integration.conftest import running_api
from voicenote.jobstore import JobStore
from voicenote.settings import ApiKey, ApiSettings, Settings, StorageSettings, SynthesisSettings
from voicenote.storage.local import LocalAudioStore

pytestmark = pytest.mark.integration


def _request(job_id: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"job_id": job_id, "created_at": int(time.time() * 1000), "text": text, "voice": "joe", "format": "wav",
            "speed": 1.0, "priority": "batch", **extra}


async def test_a_reused_job_id_with_other_content_is_refused_with_both_digests(settings: Settings, jobs: JobStore,
                                                                              tmp_path: Path) -> None:
    codecs = Codecs()
    first = codecs.request.decode_event(codecs.request.encode(_request("job_reuse1", "The first request.")))
    other = codecs.request.decode_event(codecs.request.encode(_request("job_reuse1", "Another request, same id.")))
    await StatusProjector(jobs).on_requests([first])
    await jobs.transition("job_reuse1", JobStatus.succeeded, {"completed_at": 1})
    synth = Synthesizer(NullEngine(), codecs, LocalAudioStore(tmp_path), StorageSettings(local_dir=tmp_path),
                        SynthesisSettings(), jobs)

    admission = await synth.admit([codecs.request.encode_event(first), codecs.request.encode_event(other)])

    assert admission.skipped == [0]  # the same request again: a redelivery, acknowledged without work
    [refused] = admission.refused
    assert (refused.index, refused.reason) == (1, "job_id_conflict")
    assert request_digest(first.to_record()) in refused.message and request_digest(other.to_record()) in refused.message
    assert request_digest(first.to_record()) != request_digest(other.to_record())
    assert admission.jobs == [] and admission.results == []


async def test_owner_of_a_direct_publish_and_admin_only_ownerless_jobs(settings: Settings, jobs: JobStore) -> None:
    codecs = Codecs()
    owned = codecs.request.decode_event(codecs.request.encode(_request("job_owned1", "Mine.", attributes={"owner": "writer"})))
    ownerless = codecs.request.decode_event(codecs.request.encode(_request("job_orphan1", "Nobody's.")))
    await StatusProjector(jobs).on_requests([owned, ownerless])

    keys = [ApiKey(name="writer", sha256=hash_token("vn-writer")),
            ApiKey(name="ops", sha256=hash_token("vn-admin"), scopes=["jobs", "admin"])]
    api_settings = settings.model_copy(update={"api": ApiSettings(keys=keys)})
    async with running_api(api_settings, "vn-writer") as api:
        assert (await api.get("/v1/jobs/job_owned1")).json()["status"] == "queued"
        hidden = await api.get("/v1/jobs/job_orphan1")
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "job_not_found"
        admin = {"Authorization": "Bearer vn-admin"}
        assert (await api.get("/v1/jobs/job_orphan1", headers=admin)).json()["status"] == "queued"
        assert (await api.get("/v1/jobs/job_owned1", headers=admin)).status_code == 200


async def test_requests_the_synthesis_group_dead_letters_are_neither_recorded_nor_indexed(jobs: JobStore) -> None:
    """Issue 25, defect 5: the projection indexed every decodable request, so a dead-lettered one stayed pending
    until the watchdog ended it (under the invalid id "../x y" in one case)."""
    codecs = Codecs()

    def event(job_id: str, text: str, **extra: Any) -> Any:
        return codecs.request.decode_event(codecs.request.encode(_request(job_id, text, **extra)))

    first = event("job_dl1", "The first request.")
    projector = StatusProjector(jobs)
    moved = await projector.on_requests([
        event("../x y", "A bad job id."), first, event("job_dl1", "Same id, other text, same group.", webhook_url="https://h.example/x"),
        event("job_dl1\n", "A job id with a trailing newline.")])
    assert moved == [False, True, False, False]  # only the first request of job_dl1 moved a job
    await projector.on_completions([JobCompletion(job_id="job_dl1", status="succeeded", created_at=first.created_at,
                                                  completed_at=first.created_at + 1)])
    # A conflicting request after the first one's completion: the old code indexed it again (the first was untracked).
    assert await projector.on_requests([event("job_dl1", "Same id, later.", webhook_url="https://h.example/y")]) == [False]
    assert await jobs.pending_before(int(time.time() * 1000) + 3_600_000, 10) == []
    assert await jobs.get("../x y") is None and await jobs.get("job_dl1\n") is None
    record = await jobs.get("job_dl1")
    assert record is not None and record["request_digest"] == request_digest(first.to_record())
    assert "webhook_url" not in record  # the conflicting requests filled no gap of the first one's record
