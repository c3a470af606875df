"""Job states and the one rule about them: a job's status only moves forward."""

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


def advances(current: JobStatus | None, new: JobStatus) -> bool:
    """Whether ``new`` may replace ``current``: strictly forward, and the first terminal state wins."""
    return current is None or new.rank > current.rank
