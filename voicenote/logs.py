"""Structured logs: one JSON object a line, carrying the job ids a line is about.

``VOICENOTE_LOG__FORMAT=json`` (the images set it) turns them on; the embedded default keeps text.
A line's job ids come from ``extra={"job_id": ...}`` where a caller passes one, otherwise from the
message itself (job ids have one shape, ``job_`` + 22 characters), so every existing log line that
names a job is searchable by it without each call site changing. The current trace id rides along.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_JOB_ID = re.compile(r"\bjob_[A-Za-z0-9]{22}\b")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        explicit = getattr(record, "job_id", None)
        job_ids = [str(explicit)] if explicit else list(dict.fromkeys(_JOB_ID.findall(message)))
        if len(job_ids) == 1:
            entry["job_id"] = job_ids[0]
        elif job_ids:
            entry["job_ids"] = job_ids
        trace_id = _current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _current_trace_id() -> str | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def logging_config(fmt: str, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``fmt`` ("json" or "text"), also handed to Faust's worker."""
    formatter = {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["default"]},
        # One line per HTTP call (readiness polls, S3 requests) would drown the service's own lines.
        "loggers": {name: {"level": "WARNING"} for name in ("httpx", "httpcore")},
    }


def configure_logging(fmt: str, level: str = "INFO") -> None:
    import logging.config

    logging.config.dictConfig(logging_config(fmt, level))
    if fmt == "json":
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
