"""Batches: many requests published as one submission, recorded through the job store, read back as counts."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from producer_api.auth import Caller
from producer_api.errors import ApiError
from producer_api.models import BatchAccepted, BatchRequest, BatchView
from producer_api.services.admission import Admission
from producer_api.services.common import Links, new_batch_id
from producer_api.services.routing import ModelRouter
from producer_api.services.submission import Submission
from schemas.clock import now_ms
from schemas.events import BATCH_INDEX_ATTRIBUTE, BATCH_SIZE_ATTRIBUTE
from schemas.status import JobStatus
from voicenote.client import new_job_id
from voicenote.errors import JobStoreError
from voicenote.idempotency import BATCH, IdempotencyMark, mark_attributes
from voicenote.jobstore import BatchRecord, JobStore

log = logging.getLogger(__name__)


class Batches:
    def __init__(self, *, submission: Submission, admission: Admission, router: ModelRouter, jobs: JobStore, max_items: int,
                 links: Links) -> None:
        self._submission = submission
        self._admission = admission
        self._router = router
        self._jobs = jobs
        self._max_items = max_items
        self._links = links

    async def submit(self, caller: Caller, batch: BatchRequest, idempotency_key: str | None) -> BatchAccepted:
        n = len(batch.requests)
        if n > self._max_items:
            raise ApiError(400, f"a batch holds at most {self._max_items} requests; this one has {n}",
                           param="requests", code="batch_too_large")
        if n > 1:
            await self._admission.charge(caller, n - 1)  # the route's dependency already took one
        routed = [self._router.route(item.as_speech(batch.webhook_url), f"requests.{i}.") for i, item in enumerate(batch.requests)]
        # Every item routed before any voice is checked or stored: a bad item refuses the batch at once.
        routed = [await self._router.bind(caller, item, f"requests.{i}.") for i, item in enumerate(routed)]

        async def publish(mark: IdempotencyMark | None) -> dict[str, Any]:
            batch_id = new_batch_id()
            job_ids = [new_job_id() for _ in range(n)]
            created_at = now_ms()
            # Each family's workers go through their own share of the batch; the slowest answers. Estimated before
            # publishing: under a key, the events carry the answer (voicenote/idempotency.py).
            estimate = max(self._submission.estimate_seconds(family, ahead=count - 1)
                           for family, count in Counter(item.model.family for item in routed).items())
            # Recorded first: a batch that cannot be read back is refused before any of it runs.
            await self._jobs.put_batch(BatchRecord(batch_id=batch_id, owner=caller.name, created_at=created_at, job_ids=tuple(job_ids)))
            # The items share the batch's time and say where they stand in it: a lost batch record is rebuilt from them.
            carried = mark_attributes(mark, estimate)
            results = await asyncio.gather(
                *(self._submission.publish(job_id, item, caller, priority="batch", batch_id=batch_id, created_at=created_at,
                                           attributes={**carried, BATCH_INDEX_ATTRIBUTE: str(index), BATCH_SIZE_ATTRIBUTE: str(n)})
                  for index, (job_id, item) in enumerate(zip(job_ids, routed, strict=True))),
                return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                await self._abandon(batch_id, [j for j, r in zip(job_ids, results, strict=True) if not isinstance(r, BaseException)])
                raise failed[0]
            return {"batch_id": batch_id, "job_ids": job_ids, "status_url": self._links.batch(batch_id), "estimated_seconds": estimate,
                    "ignored_params": {job_id: item.ignored for job_id, item in zip(job_ids, routed, strict=True) if item.ignored}}

        return BatchAccepted(**await self._admission.once(caller, idempotency_key, BATCH, batch, publish))

    async def view(self, caller: Caller, batch_id: str) -> BatchView:
        record = await self._jobs.get_batch(batch_id)
        if record is None or record.owner != caller.name:
            raise ApiError(404, f"no batch {batch_id!r} (unknown, or expired)", code="batch_not_found", param="batch_id")
        rows = await self._jobs.get_fields_many(record.job_ids, ["status"])
        # Accepted means on the request topic: a job without a record yet is queued.
        counts = Counter(row["status"] if row else JobStatus.queued.value for row in rows)
        return BatchView(batch_id=batch_id, created_at=record.created_at, total=len(record.job_ids), counts=dict(counts),
                         job_ids=list(record.job_ids))

    async def _abandon(self, batch_id: str, published: list[str]) -> None:
        """A batch that failed part-way: cancel what got published so no half batch runs, and drop the record."""
        for job_id in published:
            try:
                await self._jobs.transition(job_id, JobStatus.cancelled, {
                    "completed_at": now_ms(), "error_code": "batch_incomplete",
                    "error_message": f"batch {batch_id} could not be fully published"})
            except JobStoreError as exc:
                log.error("cannot cancel job %s of abandoned batch %s: %s", job_id, batch_id, exc)
        try:
            await self._jobs.delete_batch(batch_id)
        except JobStoreError as exc:
            log.error("cannot remove abandoned batch %s: %s", batch_id, exc)
