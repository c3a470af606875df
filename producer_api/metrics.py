"""The API's Prometheus metrics, all in one place: HTTP traffic by route, and the producer's own events.

Each app has its own registry (tests build several apps in one process). Routes never count by hand:
the ASGI middleware here counts requests, and the service reports through ``ApiMetrics`` methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("voicenote_api_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.latency = Histogram("voicenote_api_request_seconds", "HTTP request latency", ["method", "route"], registry=r,
                                 buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.jobs_submitted = Counter("voicenote_api_jobs_submitted", "Jobs published to the request topic", ["priority"], registry=r)
        self.rate_limited = Counter("voicenote_api_rate_limited", "Requests refused with 429", registry=r)
        self.redis_fallbacks = Counter("voicenote_api_redis_fallbacks", "Requests served without Redis", ["what"], registry=r)
        self.synthesis_lag = Gauge("voicenote_api_synthesis_lag", "Request-topic lag of the synthesis group (last sample)", registry=r)
        self.synthesis_rate = Gauge("voicenote_api_synthesis_jobs_per_second", "Measured synthesis throughput", registry=r)

    def follow(self, estimator: Any) -> None:
        """The lag and throughput gauges read ``estimator`` at each scrape, on whichever listener serves them."""
        self.synthesis_lag.set_function(lambda: estimator.lag)
        self.synthesis_rate.set_function(lambda: estimator.rate)


def serve_metrics(metrics: ApiMetrics, host: str, port: int) -> Callable[[], None]:
    """Serve ``metrics`` at ``http://host:port/metrics`` on a listener of their own (a thread), so the API's
    public port need not answer /metrics; returns the function that stops it."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


class MetricsMiddleware:
    """Counts every HTTP request by its route template (not its path, which holds job ids)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.latency.labels(scope["method"], template).observe(time.perf_counter() - started)
