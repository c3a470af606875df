"""Liveness and readiness of a worker process, served beside its /metrics.

``/healthz``: the process answers. ``/readyz``: started (engine loaded and warmed up, consumer
subscribed), not draining and not waiting out a Redis or storage outage, so a pod being stopped leaves its Service and a starting one is not counted before its
engine is in memory. Faust workers serve these on Faust's web server; the webhook dispatcher, which
is not a Faust app, on a small aiohttp server of its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust
from aiohttp import web

from voicenote.retry import DependencyHealth

CONTENT_TYPE = "text/plain; version=0.0.4"


@dataclass
class Readiness:
    """Ready = started, not draining, no dependency being waited out, and the engine warmed up (if any)."""

    started: bool = False
    draining: bool = False
    health: DependencyHealth | None = None  # Redis/storage calls being retried (voicenote/retry.py)
    engine: Any = None  # an engine with a ``ready`` property (S1-mini: CUDA graphs captured); None or absent: ready

    @property
    def engine_ready(self) -> bool:
        return bool(getattr(self.engine, "ready", True))

    @property
    def ready(self) -> bool:
        dependencies_ok = self.health is None or self.health.ready
        return self.started and not self.draining and dependencies_ok and self.engine_ready

    def body(self) -> tuple[int, bytes]:
        status = 200 if self.ready else 503
        report: dict[str, Any] = {"ready": self.ready, "started": self.started, "draining": self.draining,
                                  "engine_ready": self.engine_ready}
        if self.health is not None:
            report["waiting_on"] = self.health.report()["waiting_on"]
        return status, json.dumps(report).encode()


def attach_faust_probes(app: faust.App, readiness: Readiness) -> None:
    @app.page("/healthz")
    async def healthz(view: Any, request: Any) -> Any:
        return view.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(view: Any, request: Any) -> Any:
        status, body = readiness.body()
        return view.bytes(body, content_type="application/json", status=status)


async def serve_probes(host: str, port: int, readiness: Readiness, render_metrics: Callable[[], bytes]) -> web.AppRunner:
    """Start /healthz, /readyz and /metrics on ``host:port``; the caller cleans the runner up."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        status, body = readiness.body()
        return web.Response(body=body, status=status, content_type="application/json")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render_metrics(), headers={"Content-Type": CONTENT_TYPE})

    server = web.Application()
    server.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)])
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
