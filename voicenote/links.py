"""The public URLs the API hands out (``api.public_base_url``); the projection rebuild restores answers holding them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Links:
    base: str

    def job(self, job_id: str) -> str:
        return f"{self.base.rstrip('/')}/v1/jobs/{job_id}"

    def audio(self, job_id: str) -> str:
        return f"{self.job(job_id)}/audio"

    def timestamps(self, job_id: str) -> str:
        return f"{self.job(job_id)}/timestamps"

    def captions(self, job_id: str) -> str:
        return f"{self.job(job_id)}/captions"

    def batch(self, batch_id: str) -> str:
        return f"{self.base.rstrip('/')}/v1/batches/{batch_id}"
