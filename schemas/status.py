"""Job states and their ranks. A job moves only to a strictly higher rank, so the first terminal state
wins; the job store's Lua script (voicenote/jobstore.py) applies that rule atomically in Redis."""

from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def terminal(self) -> bool:
        return self.rank == _TERMINAL


_TERMINAL = 30
_RANK = {
    JobStatus.queued: 10,
    JobStatus.running: 20,
    JobStatus.succeeded: _TERMINAL,
    JobStatus.failed: _TERMINAL,
    JobStatus.cancelled: _TERMINAL,
}

