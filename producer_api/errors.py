"""Every error answer in OpenAI's envelope: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from voicenote.errors import DependencyUnavailable, VoicenoteError

log = logging.getLogger(__name__)


class ApiError(VoicenoteError):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None, job_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.job_id = job_id  # an accepted job's id: the answer names it (error.job_id), so a client polls, not resubmits


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None,
             job_id: str | None = None) -> dict[str, object]:
    error: dict[str, object] = {"message": message, "type": type_, "param": param, "code": code}
    if job_id is not None:
        error["job_id"] = job_id
    return {"error": error}


# Validation error types (raised in producer_api/models.py) that are the answer's code as they are.
SPECIFIC_CODES = frozenset({"empty_utterance", "invalid_characters", "invalid_speed"})


def json_error_message(error: Mapping[str, Any]) -> str:
    """FastAPI says "JSON decode error" with the offset as the location; say where and what to send."""
    loc = error.get("loc", ())
    position = loc[1] if len(loc) > 1 else None
    reason = (error.get("ctx") or {}).get("error", "JSON decode error")
    where = f" at character {position}" if position is not None else ""
    return (f"the request body is not valid JSON ({reason}{where}); send one JSON object with "
            "Content-Type: application/json, strings in double quotes, no trailing commas, no NaN or Infinity")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(envelope(exc.message, exc.type, exc.param, exc.code, exc.job_id), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return JSONResponse(envelope(json_error_message(first), "invalid_request_error", None, "invalid_json"), status_code=400)
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        details = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}" for e in errors)
        kind = str(first.get("type", ""))
        code = kind if kind in SPECIFIC_CODES else "invalid_request"
        return JSONResponse(envelope(details, "invalid_request_error", param, code), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # An exception may name its own code and param (producer_api/bodylimit.py's BodyTooLarge does).
        code = getattr(exc, "code", None) or {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        return JSONResponse(envelope(str(exc.detail), "invalid_request_error", getattr(exc, "param", None), code),
                            status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(envelope("internal error; it has been logged", "server_error", None, "internal_error"), status_code=500)

    @app.exception_handler(DependencyUnavailable)
    async def _unavailable(_: Request, exc: DependencyUnavailable) -> JSONResponse:
        log.warning("dependency %s unavailable: %s", exc.dependency, exc)
        return JSONResponse(envelope(f"{exc.dependency} is unavailable; retry later", "server_error", None, f"{exc.dependency}_unavailable"),
                            status_code=503, headers={"Retry-After": "2"})
