"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from producer_api.deps import Ready

router = APIRouter(tags=["operations"])
# /metrics: on the API's port, unless VOICENOTE_API__METRICS_PORT gives the metrics a listener of their own.
metrics_router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive", responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}})
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready when Kafka takes requests (and, if required, the workers joined); Redis or storage down only degrades",
            responses={200: {"content": {"application/json": {"example": {"ready": True, "degraded": ["redis"], "waiting_on": {},
                                                                          "checks": {"kafka": True, "redis": False, "storage": True}}}}},
                       503: {"content": {"application/json": {"example": {"ready": False, "degraded": [],
                                                                          "waiting_on": {"synthesis_group": "no member"},
                                                                          "checks": {"kafka": True, "redis": True, "storage": True}}}}}})
async def readyz(readiness: Ready) -> JSONResponse:
    # Kafka is the source of truth: while the producer can publish, async requests are accepted even with
    # Redis down (docs/producer-api.md), so only Kafka gates readiness. A Redis or storage outage is
    # reported as ``degraded`` (sync answers, job reads and audio then fail with 503 on that pod, as on
    # every other pod: taking it out of the Service would not help).
    # With api.ready_requires_workers (voicenote run), also not ready until the synthesis and completion
    # groups have a member: a cached answer, described in the background (services/worker_groups.py).
    checks = await readiness.checks()
    waiting_on = readiness.waiting_on()
    ready = checks["kafka"] and not waiting_on
    degraded = sorted(name for name, ok in checks.items() if not ok and name != "kafka")
    return JSONResponse({"ready": ready, "degraded": degraded, "waiting_on": waiting_on, "checks": checks},
                        status_code=200 if ready else 503)


@metrics_router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": "voicenote_api_requests_total{method=\"POST\",...} 42.0"}}}})
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
