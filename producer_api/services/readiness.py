"""Readiness: whether Kafka, Redis and storage answer now (``/readyz``)."""

from __future__ import annotations

from voicenote.jobstore import JobStore
from voicenote.kafka import AsyncProducer
from voicenote.storage import AudioStore


class Readiness:
    def __init__(self, *, producer: AsyncProducer, jobs: JobStore, store: AudioStore) -> None:
        self._producer = producer
        self._jobs = jobs
        self._store = store

    async def checks(self) -> dict[str, bool]:
        return {"kafka": await self._producer.ping(timeout=1.0), "redis": await self._jobs.ping(), "storage": await self._store.ping()}
