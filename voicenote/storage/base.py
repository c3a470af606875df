"""The storage interface and the pure rules about object keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from schemas.validation import JOB_ID


def audio_key(prefix: str, job_id: str, extension: str) -> str:
    """The deterministic object key of a job's audio: a redelivery overwrites, never duplicates.

    A two-character shard from the id spreads keys over S3 partitions.
    """
    if not JOB_ID.match(job_id):
        raise ValueError(f"job id {job_id!r} is not 1-64 characters of [A-Za-z0-9_-]")
    return f"{prefix}{job_id[-2:]}/{job_id}.{extension}"


def timestamps_key(prefix: str, job_id: str) -> str:
    """Where a job's word timestamps (JSON) are stored: beside its audio, deterministic like it."""
    return audio_key(prefix, job_id, "timestamps.json")


def claim_key(prefix: str, job_id: str) -> str:
    """Where the synthesis side parks audio too large for an event (claim check)."""
    return audio_key(f"{prefix}claims/", job_id, "wav")


@dataclass(frozen=True)
class StoredObject:
    key: str
    uri: str
    size: int
    content_type: str


@dataclass(frozen=True)
class Put:
    """One object to write: see :meth:`AudioStore.put`."""

    key: str
    data: bytes
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)


class AudioStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> StoredObject:
        """Write ``data`` under ``key`` (overwriting), returning where it went."""
        ...

    async def put_many(self, puts: Sequence[Put]) -> list[StoredObject]:
        """Write several objects (what one group of completions brings), in order; raises on the first failure."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; raises AudioNotFound."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds an unexpired object."""
        ...

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix`` (a plain string prefix, not a glob), sorted; unexpired only."""
        ...

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Delete ``keys``; a key that is already gone is no error."""
        ...

    async def url_for(self, key: str, expires_in: int) -> str | None:
        """A direct download URL (presigned), or None when the API must serve the bytes itself."""
        ...

    async def provision(self) -> None:
        """Create the bucket or folder and apply the expiry of stored audio (lifecycle)."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
