"""Sync speech: publish as interactive, wait for the job's end (Redis pub/sub), answer with the audio."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn

from producer_api.auth import Caller
from producer_api.errors import ApiError
from producer_api.models import SpeechRequest
from producer_api.services.admission import Admission
from producer_api.services.common import Audio, Links, audio_headers, ignored_header
from producer_api.services.routing import ModelRouter, Routed
from producer_api.services.submission import Submission
from producer_api.waiter import CompletionWaiter
from schemas.status import JobStatus
from voicenote.audio import CONTENT_TYPES
from voicenote.client import new_job_id
from voicenote.errors import AudioNotFound, DependencyUnavailable, JobStoreError
from voicenote.idempotency import SPEECH, IdempotencyMark, mark_attributes
from voicenote.jobstore import JobStore
from voicenote.storage import AudioStore

log = logging.getLogger(__name__)

# The longest a waiter goes without re-reading the job's record: what a missed completion announcement (the
# subscription dropped and came back) costs at most.
RECHECK_SECONDS = 2.0
# OpenAI's clients retry a 5xx unless told not to; resubmitting an accepted sync request makes a second job.
NO_RESUBMIT = {"x-should-retry": "false"}


@contextmanager
def answering_accepted(job_id: str, links: Links, headers: Mapping[str, str] | None = None) -> Iterator[None]:
    """Around the work that follows a sync request's acceptance (its event is on the topic, the job exists).

    Nothing that fails in there may answer without the job's id: a bare 503 says "retry later", and a client
    that retries makes a duplicate job. A dependency that fails (Redis, storage: e.g. every pooled connection
    busy past ``redis.pool_timeout_seconds``) answers 503 ``<dependency>_unavailable`` and anything unexpected 500
    ``internal_error`` (logged), both with ``error.job_id``, ``X-Job-Id``, ``Location`` (the job's status URL)
    and ``x-should-retry: false``, and no Retry-After. ``ApiError``s (the job's own outcome, 504) pass as they are.
    """
    try:
        yield
    except ApiError:
        raise
    except DependencyUnavailable as exc:
        raise ApiError(503, f"job {job_id} was accepted, but {exc.dependency} is unavailable so its answer cannot be given "
                            f"now; do not send the request again (that would be a second job): poll {links.job(job_id)}",
                       type_="server_error", code=f"{exc.dependency}_unavailable", job_id=job_id,
                       headers=_accepted_headers(job_id, links, headers)) from exc
    except Exception as exc:
        log.exception("job %s: answering an accepted sync request failed", job_id)
        raise ApiError(500, f"job {job_id} was accepted, but its answer failed (internal error, logged); do not send "
                            f"the request again (that would be a second job): poll {links.job(job_id)}",
                       type_="server_error", code="internal_error", job_id=job_id,
                       headers=_accepted_headers(job_id, links, headers)) from exc


def raise_for_outcome(job_id: str, record: Mapping[str, str], headers: dict[str, str]) -> NoReturn:
    """The error a speech request (whole-file or streamed) gets for a job that ended without succeeding:
    409 cancelled, 400 when the worker refused the input, else 500 with the job's error code."""
    if record.get("status") == JobStatus.cancelled.value:
        raise ApiError(409, f"job {job_id} was cancelled", code="job_cancelled", headers=headers)
    code, message = record.get("error_code", "unknown"), record.get("error_message", "synthesis failed")
    if code == "invalid_request":
        raise ApiError(400, f"job {job_id}: {message}", code=code, headers=headers)
    raise ApiError(500, f"job {job_id} failed: {message}", type_="server_error", code=code, headers=headers)


def _accepted_headers(job_id: str, links: Links, headers: Mapping[str, str] | None) -> dict[str, str]:
    return {**(headers or {}), "X-Job-Id": job_id, "Location": links.job(job_id), **NO_RESUBMIT}


class SyncSpeech:
    def __init__(self, *, submission: Submission, admission: Admission, router: ModelRouter, waiter: CompletionWaiter,
                 jobs: JobStore, store: AudioStore, timeout_seconds: float, links: Links) -> None:
        self._submission = submission
        self._admission = admission
        self._router = router
        self._waiter = waiter
        self._jobs = jobs
        self._store = store
        self._timeout = timeout_seconds
        self._links = links

    async def speak(self, caller: Caller, req: SpeechRequest, idempotency_key: str | None) -> Audio:
        """Publish as interactive and wait for the job's end; 504 with the job id past the timeout."""
        routed = await self._router.route_for(caller, req)
        if not self._waiter.subscribed.is_set():
            raise JobStoreError("not subscribed to completions, cannot wait for the audio")

        async def publish(mark: IdempotencyMark | None) -> dict[str, Any]:
            job_id = new_job_id()
            await self._submission.publish(job_id, routed, caller, priority="interactive", attributes=mark_attributes(mark))
            return {"job_id": job_id}

        # No lost wake-up: _wait_terminal registers for the job's completion, then re-reads the record.
        job_id = (await self._admission.once(caller, idempotency_key, SPEECH, req, publish))["job_id"]
        # Accepted from here on (the request is on the topic): every answer names the job.
        with answering_accepted(job_id, self._links, ignored_header(routed.ignored)):
            return await self._answer(job_id, routed, req)

    async def _answer(self, job_id: str, routed: Routed, req: SpeechRequest) -> Audio:
        record = await self._wait_terminal(job_id, self._timeout)
        status = record["status"]
        if status == JobStatus.succeeded.value:
            try:
                data = await self._store.get(record["audio_key"])
            except AudioNotFound:
                raise ApiError(410, f"the audio of job {job_id!r} has expired", code="audio_expired") from None
            fmt = record.get("format", req.response_format)
            headers = {**audio_headers(job_id, fmt, record, routed.model.sample_rate), **ignored_header(routed.ignored)}
            return Audio(data, record.get("content_type") or CONTENT_TYPES[fmt], headers)
        raise_for_outcome(job_id, record, {"X-Job-Id": job_id, **ignored_header(routed.ignored)})

    # -- what the streaming answer (services/streaming.py) shares with the whole-file one -----------------
    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def links(self) -> Links:
        return self._links

    def route(self, req: SpeechRequest) -> Routed:
        routed = self._router.route(req)
        if not self._waiter.subscribed.is_set():
            raise JobStoreError("not subscribed to completions, cannot wait for the audio")
        return routed

    async def publish_once(self, caller: Caller, req: SpeechRequest, idempotency_key: str | None, routed: Routed,
                           job_id: str, *, stream: bool) -> bool:
        """Publish ``job_id`` as interactive unless the Idempotency-Key already answered; True when published."""
        published = False
        routed = await self._router.bind(caller, routed)  # the registered voice checked, inline references stored

        async def publish(mark: IdempotencyMark | None) -> dict[str, Any]:
            nonlocal published
            published = True
            await self._submission.publish(job_id, routed, caller, priority="interactive", stream=stream,
                                           attributes=mark_attributes(mark))
            return {"job_id": job_id}

        await self._admission.once(caller, idempotency_key, SPEECH, req, publish)
        return published

    async def wait_for_end(self, job_id: str, until: float, *, also: asyncio.Future[Any] | None = None,
                           read: bool = True) -> dict[str, str] | None:
        """One round of waiting for ``job_id``'s end: its terminal record, or None after a wait.

        Registers for the job's completion announcement first, then reads the record (unless ``read`` is False:
        the caller has the terminal record already), so a completion that lands in between is not lost. While
        the job is not over, waits for the announcement, for ``also`` (e.g. the next streamed segment) or until
        ``until`` (the event loop's clock), but never longer than ``RECHECK_SECONDS``; then returns None and the
        caller looks again. Raises TimeoutError, after the read, once ``until`` has passed.
        """
        loop = asyncio.get_running_loop()
        with self._waiter.watch(job_id) as done:
            if read:
                record = await self._jobs.get(job_id)  # after registering: a completion in between is not lost
                if record is not None and JobStatus(record["status"]).terminal:
                    return record
            remaining = until - loop.time()
            if remaining <= 0:
                raise TimeoutError
            await asyncio.wait({done} if also is None else {done, also}, timeout=min(remaining, RECHECK_SECONDS),
                               return_when=asyncio.FIRST_COMPLETED)
        return None

    async def stored_audio(self, key: str) -> bytes:
        return await self._store.get(key)

    async def _wait_terminal(self, job_id: str, timeout: float) -> dict[str, str]:
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while (record := await self.wait_for_end(job_id, deadline)) is None:
                pass
        except TimeoutError:
            raise ApiError(504, f"job {job_id} is not finished after {timeout:g}s; poll {self._links.job(job_id)}",
                           type_="server_error", code="timeout", param=None, job_id=job_id,
                           headers={"X-Job-Id": job_id, "Location": self._links.job(job_id), **NO_RESUBMIT}) from None
        return record
