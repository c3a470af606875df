"""Documented error answers (OpenAI's envelope) for the OpenAPI document."""

from __future__ import annotations

from typing import Any

# FastAPI's `responses=` parameter: keyed by status code or "default", so int | str (dict keys are invariant).
Responses = dict[int | str, dict[str, Any]]


def error_example(status: int, description: str, message: str, type_: str, code: str, param: str | None = None) -> tuple[int, dict[str, Any]]:
    return status, {"description": description, "content": {"application/json": {"example": {
        "error": {"message": message, "type": type_, "param": param, "code": code}}}}}


ERRORS: Responses = dict([
    error_example(400, "The request is invalid; the message says what to fix",
         "voice: Value error, unknown voice 'bob'; valid voices: alloy, ash, ...", "invalid_request_error", "invalid_request", "voice"),
    error_example(401, "No API key, or an unknown one", "incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    error_example(403, "The key lacks the permission", "API key 'reader' lacks the 'speech' permission", "permission_error",
         "insufficient_permissions"),
    error_example(413, "The body is over api.max_body_bytes", "request body too large: the limit is 2097152 bytes",
         "invalid_request_error", "request_too_large"),
    error_example(429, "Rate limited (see Retry-After)", "rate limit of 50 requests/s (burst 100) exceeded; retry in 1s",
         "rate_limit_error", "rate_limit_exceeded"),
    error_example(503, "Kafka or Redis is unavailable; nothing was published (see Retry-After)", "kafka is unavailable; retry later",
         "server_error", "kafka_unavailable"),
])

NOT_FOUND: Responses = dict([error_example(404, "Unknown or expired (or another key's)", "no job 'job_x' (unknown, or expired)",
                       "invalid_request_error", "job_not_found", "job_id")])
CONFLICT_IDEMPOTENCY: Responses = dict([error_example(409, "Idempotency-Key reused with a different body",
                                  "this Idempotency-Key was already used with a different request body",
                                  "invalid_request_error", "idempotency_key_reused", "Idempotency-Key")])
TIMEOUT: Responses = dict([error_example(504, "Not finished within api.sync_timeout_seconds; poll the job (X-Job-Id, Location headers)",
                     "job job_x is not finished after 60s; poll http://127.0.0.1:8000/v1/jobs/job_x", "server_error", "timeout")])
NO_TIMESTAMPS: Responses = dict([error_example(409, "No word timestamps: not finished, not asked for, or the engine cannot time words",
                           "job 'job_x' has no word timestamps: the s1mini engine does not give word timestamps",
                           "invalid_request_error", "timestamps_unavailable", "job_id")])
NOT_CANCELLABLE: Responses = dict([error_example(409, "The job already started or finished", "job job_x is succeeded; only a queued job can be cancelled",
                             "invalid_request_error", "job_not_cancellable", "job_id")])
