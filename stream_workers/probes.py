"""Liveness and readiness of a worker process, served beside its /metrics.

``/healthz``: the process answers. ``/readyz``: started (engine loaded, consumer subscribed) and not
draining, so a pod being stopped leaves its Service and a starting one is not counted before its
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

CONTENT_TYPE = "text/plain; version=0.0.4"


@dataclass
class Readiness:
    started: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.started and not self.draining

    def body(self) -> tuple[int, bytes]:
        status = 200 if self.ready else 503
        return status, json.dumps({"ready": self.ready, "started": self.started, "draining": self.draining}).encode()


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
