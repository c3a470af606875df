"""Idempotency-Key answers in Redis: one format for the API, which writes them, and the projection rebuild,
which restores them after Redis lost its data.

A key is held as ``<prefix>idem:<owner>:<sha256 of the key>`` (never the key itself), its value JSON:
``{"fp": <request fingerprint>, "state": "pending"}`` while the request is being published, then
``{"fp": ..., "state": "done", "response": <the answer>}`` for ``api.idempotency_ttl_seconds``.

So that an answer lost with Redis can be given again, the API marks every request event it publishes
under a key (:class:`IdempotencyMark`, in the event's attributes): the key's sha256, the request's
fingerprint, the endpoint and the estimate it answered with. The rest of an answer is in the events
themselves (job ids, batch id and order, ignored parameters) or in settings (the public URLs), so
``stream_workers/completion/restoration.py`` rebuilds the ``done`` record from the request topic.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Request-event attributes the API sets on a request published under an Idempotency-Key.
KEY_ATTRIBUTE = "idempotency_key_sha256"
FINGERPRINT_ATTRIBUTE = "idempotency_fingerprint"
ENDPOINT_ATTRIBUTE = "idempotency_endpoint"
ESTIMATE_ATTRIBUTE = "idempotency_estimated_seconds"  # the answer's estimated_seconds (async and batch answers)

# The endpoints whose answers are kept (Admission.once's ``endpoint``); each answers in its own shape.
SPEECH = "speech"  # {"job_id"}: the sync and streaming answers wait on the job again
ASYNC = "speech.async"  # AsyncAccepted
BATCH = "speech.batch"  # BatchAccepted
ENDPOINTS = (SPEECH, ASYNC, BATCH)


def key_digest(key: str) -> str:
    """What the store keys by instead of the Idempotency-Key: its sha256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def record_key(key_prefix: str, owner: str, digest: str) -> str:
    """The Redis key of ``owner``'s Idempotency-Key whose sha256 is ``digest``: keys are scoped to the caller."""
    return f"{key_prefix}idem:{owner}:{digest}"


def pending_value(fp: str) -> str:
    return json.dumps({"fp": fp, "state": "pending"})


def done_value(fp: str, response: Mapping[str, Any]) -> str:
    return json.dumps({"fp": fp, "state": "done", "response": dict(response)})


@dataclass(frozen=True)
class IdempotencyMark:
    """What a request event published under an Idempotency-Key carries of it (never the key itself)."""

    key_sha256: str
    fingerprint: str
    endpoint: str

    def attributes(self, estimated_seconds: float | None = None) -> dict[str, str]:
        attributes = {KEY_ATTRIBUTE: self.key_sha256, FINGERPRINT_ATTRIBUTE: self.fingerprint, ENDPOINT_ATTRIBUTE: self.endpoint}
        if estimated_seconds is not None:
            attributes[ESTIMATE_ATTRIBUTE] = repr(float(estimated_seconds))  # repr: float() gives the same number back
        return attributes

    @classmethod
    def from_attributes(cls, attributes: Mapping[str, str]) -> IdempotencyMark | None:
        """The mark of a request event; None when it was not published under a key."""
        key, fp, endpoint = (attributes.get(name) for name in (KEY_ATTRIBUTE, FINGERPRINT_ATTRIBUTE, ENDPOINT_ATTRIBUTE))
        if not key or not fp or not endpoint:
            return None
        return cls(key_sha256=key, fingerprint=fp, endpoint=endpoint)


def mark_attributes(mark: IdempotencyMark | None, estimated_seconds: float | None = None) -> dict[str, str]:
    """The attributes a request event gets for ``mark``; none without a key."""
    return {} if mark is None else mark.attributes(estimated_seconds)


@dataclass(frozen=True)
class KeptAnswer:
    """A ``done`` Idempotency-Key record to write back: ``owner``'s key, the fingerprint it answered and the answer,
    until ``expires_at`` (epoch ms)."""

    owner: str
    key_sha256: str
    fingerprint: str
    response: dict[str, Any]
    created_at: int
    expires_at: int
