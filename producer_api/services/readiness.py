"""Readiness: whether Kafka, Redis and storage answer now, and (``api.ready_requires_workers``) whether the
workers' consumer groups have members (``/readyz``)."""

from __future__ import annotations

from producer_api.services.worker_groups import WorkerGroups
from voicenote.jobstore import JobStore
from voicenote.kafka import AsyncProducer
from voicenote.storage import AudioStore


class Readiness:
    def __init__(self, *, producer: AsyncProducer, jobs: JobStore, store: AudioStore,
                 workers: WorkerGroups | None = None) -> None:
        self._producer = producer
        self._jobs = jobs
        self._store = store
        self._workers = workers

    async def checks(self) -> dict[str, bool]:
        return {"kafka": await self._producer.ping(timeout=1.0), "redis": await self._jobs.ping(), "storage": await self._store.ping()}

    def waiting_on(self) -> dict[str, str]:
        """The worker groups not there yet (cached by a background task; empty when not required)."""
        return self._workers.waiting_on() if self._workers is not None else {}
