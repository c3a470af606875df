"""Liveness and readiness of a worker process, served beside its /metrics.

``/healthz``: the process answers. ``/readyz``: started (engine loaded and warmed up, consumer
subscribed), not draining and not waiting out a Redis, storage or broker outage, so a pod being stopped
leaves its Service and a starting one is not counted before its engine is in memory. A broker outage is
noticed by :class:`BrokerWatch`, which asks the broker for metadata every ``worker.broker_check_seconds``. Faust workers serve these on Faust's web server; the webhook dispatcher, which
is not a Faust app, on a small aiohttp server of its own.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust
from aiohttp import web

from voicenote.kafka import admin_client
from voicenote.retry import DependencyHealth
from voicenote.settings import KafkaSettings

log = logging.getLogger(__name__)

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


class BrokerWatch:
    """Marks ``kafka`` as waited on in ``health`` while the broker does not answer a metadata request.

    A worker's consumer and producer retry a lost broker by themselves, so nothing crashes; but the worker
    makes no progress meanwhile, and its readiness should say so. One miss can be a slow answer on a busy
    machine, so it takes ``misses`` in a row. Runs on a daemon thread (the check blocks), one client kept.
    """

    def __init__(self, settings: KafkaSettings, health: DependencyHealth, interval: float = 5.0, misses: int = 2,
                 timeout: float = 3.0) -> None:
        # log_level 2: the consumer's own client already logs the lost connection; this one stays quiet.
        self._admin = admin_client(settings, {"log_level": 2})
        self._health, self._interval, self._misses, self._timeout = health, interval, misses, timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-watch", daemon=True)
        self.missed = 0

    def start(self) -> BrokerWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self._timeout + self._interval)

    def check(self) -> None:
        """One metadata request; updates ``health``."""
        try:
            self._admin.list_topics(timeout=self._timeout)
        except Exception as exc:  # noqa: BLE001 - KafkaException or a client error: either way the broker is not answering
            self.missed += 1
            if self.missed >= self._misses:
                if "kafka" not in self._health.waiting:
                    log.warning("broker not answering (%d checks in a row): %s", self.missed, exc)
                self._health.failing("kafka", f"no metadata from the broker: {exc}")
            return
        if "kafka" in self._health.waiting:
            log.info("broker answering again")
        self.missed = 0
        self._health.recovered("kafka")

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.check()
