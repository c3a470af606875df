"""FastAPI dependencies: each service built in the lifespan (producer_api/services/container.py), and the
authenticated, rate-limited caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPBearer

from producer_api.auth import Caller
from producer_api.services.admission import Admission
from producer_api.services.audio import AudioAccess
from producer_api.services.batches import Batches
from producer_api.services.cancellation import Cancellation
from producer_api.services.container import Services
from producer_api.services.queries import JobQueries
from producer_api.services.readiness import Readiness
from producer_api.services.routing import ModelRouter
from producer_api.services.submission import Submission
from producer_api.services.sync import SyncSpeech
from producer_api.services.voices import VoiceRegistry
from producer_api.streaming import SegmentRouter

# Only documents the scheme in OpenAPI; the header itself is checked by the Authenticator.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def _services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


AllServices = Annotated[Services, Depends(_services)]


def _admission(services: AllServices) -> Admission:
    return services.admission


def _router(services: AllServices) -> ModelRouter:
    return services.router


def _submission(services: AllServices) -> Submission:
    return services.submission


def _batches(services: AllServices) -> Batches:
    return services.batches


def _sync(services: AllServices) -> SyncSpeech:
    return services.sync


def _queries(services: AllServices) -> JobQueries:
    return services.queries


def _cancellation(services: AllServices) -> Cancellation:
    return services.cancellation


def _audio(services: AllServices) -> AudioAccess:
    return services.audio


def _readiness(services: AllServices) -> Readiness:
    return services.readiness


def _voices(services: AllServices) -> VoiceRegistry:
    return services.voices


def _segments(request: Request) -> SegmentRouter | None:
    return request.app.state.segments  # type: ignore[no-any-return]  # None: the catalog has no segments topic


Router = Annotated[ModelRouter, Depends(_router)]
Submitting = Annotated[Submission, Depends(_submission)]
BatchService = Annotated[Batches, Depends(_batches)]
Speaking = Annotated[SyncSpeech, Depends(_sync)]
Queries = Annotated[JobQueries, Depends(_queries)]
Cancelling = Annotated[Cancellation, Depends(_cancellation)]
AudioFiles = Annotated[AudioAccess, Depends(_audio)]
Ready = Annotated[Readiness, Depends(_readiness)]
Voices = Annotated[VoiceRegistry, Depends(_voices)]
Segments = Annotated[SegmentRouter | None, Depends(_segments)]


def _caller(scope: str) -> Callable[..., Awaitable[Caller]]:
    async def dependency(request: Request, admission: Annotated[Admission, Depends(_admission)],
                         _: Annotated[object, Security(_bearer)] = None) -> Caller:
        caller = request.app.state.auth.authenticate(request.headers.get("authorization"),
                                                     request.client.host if request.client else None)
        caller.require(scope)
        await admission.charge(caller)
        return caller

    return dependency


Submitter = Annotated[Caller, Depends(_caller("speech"))]
Reader = Annotated[Caller, Depends(_caller("jobs"))]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255,
                                              description="Same key and body: the same job; same key, other body: 409.")]
