"""Project job status: requests and completions in, forward-only job records in Redis out.

Also the one place a typed event becomes job-record fields, and the dedup of redelivered results.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from schemas.clock import now_ms
from schemas.events import JobCompletion, SynthesisRequest, SynthesisResult
from schemas.status import JobStatus
from schemas.validation import REQUEST_DIGEST_FIELD, request_digest, valid_job_id
from voicenote.jobstore import JobStore, Transition, WebhookState
from voicenote.tracing import batch_attributes, span

log = logging.getLogger(__name__)


class StatusProjector:
    """Requests and completions in, forward-only job records in Redis out.

    The ``*_many`` forms apply what one fetch brought in one Redis round trip; the single forms are
    the same with one record.
    """

    def __init__(self, jobs: JobStore) -> None:
        self._jobs = jobs

    async def on_request(self, request: SynthesisRequest) -> bool:
        return (await self.on_requests([request]))[0]

    async def on_completion(self, completion: JobCompletion) -> bool:
        return (await self.on_completions([completion]))[0]

    async def on_requests(self, requests: Sequence[SynthesisRequest]) -> list[bool]:
        """Record each request as ``queued`` and index it for the watchdog; per request, whether it moved its job.

        A request the synthesis group dead-letters is neither recorded nor indexed (issue 25, defect 5): no
        completion ever untracks it, so the watchdog would end it hours later, under an invalid id too."""
        keep = await self.projectable(requests)
        projected = [requests[i] for i in keep]
        # Indexed first: a job whose completion is projected before this returns is unindexed after it.
        await self._jobs.track_pending([(r.job_id, r.created_at) for r in projected])
        moved = dict(zip(keep, await self._jobs.apply([Transition(r.job_id, JobStatus.queued, request_fields(r))
                                                           for r in projected]), strict=True))
        return [moved.get(i, False) for i in range(len(requests))]

    async def projectable(self, requests: Sequence[SynthesisRequest]) -> list[int]:
        """The indexes of ``requests`` the synthesis group does not dead-letter (``Synthesizer.admit``'s rules): not
        those with an invalid job id, nor those whose job id already belongs to another request (``job_id_conflict``:
        the first request's digest is on the record, or came earlier in this group). One pipelined read."""
        valid = [(i, r) for i, r in enumerate(requests) if valid_job_id(r.job_id)]
        known = await self._jobs.get_fields_many([r.job_id for _, r in valid], (REQUEST_DIGEST_FIELD,)) if valid else []
        owners: dict[str, str] = {}
        keep = []
        for (i, request), record in zip(valid, known, strict=True):
            digest = request_digest(request.to_record())
            if owners.setdefault(request.job_id, (record or {}).get(REQUEST_DIGEST_FIELD) or digest) == digest:
                keep.append(i)
        if len(keep) < len(requests):
            skipped = sorted(set(range(len(requests))) - set(keep))
            log.warning("not projecting %d requests the synthesis group dead-letters (invalid job id or job_id_conflict): %s",
                        len(skipped), ", ".join(repr(requests[i].job_id)[:80] for i in skipped[:10]))
        return keep

    async def on_completions(self, completions: Sequence[JobCompletion]) -> list[bool]:
        transitions = [Transition(c.job_id, JobStatus(c.status), completion_fields(c)) for c in completions]
        # Visible at once; the dispatcher's later states (attempts >= 1) replace it, never the reverse.
        pending = [WebhookState(c.job_id, "pending", 0) for c in completions if c.webhook_url]
        with span("voicenote.redis.complete", [c.trace_parent for c in completions], batch_attributes([c.job_id for c in completions])):
            moved = await self._jobs.apply(transitions, pending)
            await self._jobs.untrack_pending([c.job_id for c in completions])
        return moved


    async def already_completed(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` whose completion event was already emitted and projected (one round trip).

        A redelivered request can be synthesized twice (a synthesis worker killed between publishing a
        result and marking the job); its second result must not become a second completion. A job
        cancelled through the API is terminal but has no completion yet, so the mark is its own field.
        """
        if not job_ids:
            return set()
        records = await self._jobs.get_fields_many(job_ids, (COMPLETION_EMITTED_FIELD,))
        return {job_id for job_id, record in zip(job_ids, records, strict=True) if record}


COMPLETION_EMITTED_FIELD = "completion_emitted_at"


def fresh_results(results: Sequence[SynthesisResult], emitted: set[str]) -> list[SynthesisResult]:
    """The first result of each job not in ``emitted``, in order: one completion per job."""
    seen = set(emitted)
    fresh = []
    for result in results:
        if result.job_id not in seen:
            seen.add(result.job_id)
            fresh.append(result)
    return fresh


# The job-record fields each event fills: the one place a typed event becomes a JobStore mapping.
# A completion projects every field but these (the key, the transition itself, and what the record
# holds from the request or serves differently: the API builds its own audio URL).
# word_timestamps can be long: the record keeps only timestamps_key, where the API reads them.
_NOT_PROJECTED = frozenset({"job_id", "status", "audio_uri", "audio_url", "webhook_url", "batch_id", "trace_parent",
                            "word_timestamps"})
_PROJECTED = tuple(f.name for f in dataclasses.fields(JobCompletion) if f.name not in _NOT_PROJECTED)


def request_fields(r: SynthesisRequest) -> dict[str, Any]:
    """The job-record fields a request fills (queued)."""
    return {
        "created_at": r.created_at, "format": r.format, "voice": r.voice, "priority": r.priority,
        "batch_id": r.batch_id, "webhook_url": r.webhook_url, "model": r.model,
        "ignored_params": r.attributes.get("ignored_params"),
        # The first request of a job id wins (fields of a non-advancing transition only fill gaps).
        REQUEST_DIGEST_FIELD: request_digest(r.to_record()),
        # Direct publishers may name an owner (attributes.owner); jobs without one are admin-only.
        "owner": r.attributes.get("owner"),
    }


def completion_fields(c: JobCompletion) -> dict[str, Any]:
    """The job-record fields a completion fills (its terminal state)."""
    fields: dict[str, Any] = {name: getattr(c, name) for name in _PROJECTED}
    fields["cache_hit"] = int(bool(c.cache_hit))
    # Kept even when the status does not move (filled as a gap): the job has its completion event.
    fields[COMPLETION_EMITTED_FIELD] = c.completed_at or now_ms()
    return fields
