"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready only when Kafka and Redis answer")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks = {"kafka": await state.producer.ping(timeout=1.0), **await state.jobs.ready()}
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
