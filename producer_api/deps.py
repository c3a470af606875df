"""FastAPI dependencies: the service objects built in the lifespan, typed for routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from producer_api.service import JobService


def _job_service(request: Request) -> JobService:
    return request.app.state.jobs  # type: ignore[no-any-return]


Jobs = Annotated[JobService, Depends(_job_service)]
