"""Refuses request bodies above ``api.max_body_bytes`` with a 413, declared length or not.

Some routes have their own limit and answer (``RouteLimit``): a voice clip upload may be larger than a JSON
request, and a clip over its limit is a 400 ``clip_too_large`` that says what to send instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer_api.errors import envelope
from voicenote.errors import VoicenoteError


class BodyTooLarge(HTTPException, VoicenoteError):
    """An HTTPException first, so FastAPI's body reading passes it through (it turns other errors into 400s).

    Raised while a route reads its body, it is answered by the app's HTTPException handler (producer_api/errors.py),
    which takes ``code`` and ``param`` from it: a route's own limit answers as that route says."""

    def __init__(self, limit: int, route: RouteLimit | None = None) -> None:
        if route is None:
            super().__init__(413, f"request body too large: the limit is {limit} bytes")
            self.code, self.param = "request_too_large", None
        else:
            super().__init__(route.status, route.message.format(limit=limit))
            self.code, self.param = route.code, route.param


@dataclass(frozen=True)
class RouteLimit:
    """Another limit for one method and path, and the answer past it."""

    max_bytes: int
    status: int
    code: str
    message: str  # may name {limit}
    param: str | None = None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, routes: Mapping[tuple[str, str], RouteLimit] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.routes = dict(routes or {})  # (method, path) -> limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.routes.get((scope.get("method", ""), scope.get("path", "")))
        limit = route.max_bytes if route is not None else self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    await self._refuse(send, route)
                    return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, route)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, route)

    async def _refuse(self, send: Send, route: RouteLimit | None = None) -> None:
        if route is None:
            status, error = 413, envelope(f"request body too large: the limit is {self.max_bytes} bytes", "invalid_request_error",
                                          None, "request_too_large")
        else:
            status, error = route.status, envelope(route.message.format(limit=route.max_bytes), "invalid_request_error",
                                                   route.param, route.code)
        body = json.dumps(error).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
