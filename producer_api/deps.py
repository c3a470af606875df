"""FastAPI dependencies: the service built in the lifespan, and the authenticated, rate-limited caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPBearer

from producer_api.auth import Caller
from producer_api.service import JobService

# Only documents the scheme in OpenAPI; the header itself is checked by the Authenticator.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def _job_service(request: Request) -> JobService:
    return request.app.state.jobs  # type: ignore[no-any-return]


def _caller(scope: str) -> Callable[..., Awaitable[Caller]]:
    async def dependency(request: Request, _: Annotated[object, Security(_bearer)] = None) -> Caller:
        caller = request.app.state.auth.authenticate(request.headers.get("authorization"),
                                                     request.client.host if request.client else None)
        caller.require(scope)
        await request.app.state.jobs.charge(caller)
        return caller

    return dependency


Jobs = Annotated[JobService, Depends(_job_service)]
Submitter = Annotated[Caller, Depends(_caller("speech"))]
Reader = Annotated[Caller, Depends(_caller("jobs"))]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255,
                                              description="Same key and body: the same job; same key, other body: 409.")]
