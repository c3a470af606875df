"""Building dead letters: the original bytes, where they came from, and why they were refused."""

from __future__ import annotations

from faust.types import EventT

from schemas.clock import now_ms
from schemas.events import DeadLetter


def dead_letter(event: EventT, *, consumer: str, error_type: str, error_message: str) -> DeadLetter:
    """The DeadLetter event for a Faust event that could not be processed."""
    msg = event.message
    headers = msg.headers or []
    header_map = dict(headers.items()) if hasattr(headers, "items") else {k: v for k, v in headers}
    return DeadLetter(
        source_topic=msg.topic,
        source_partition=msg.partition,
        source_offset=msg.offset,
        source_timestamp=int(msg.timestamp * 1000) if msg.timestamp else None,
        key=msg.key if isinstance(msg.key, bytes) else None,
        value=msg.value if isinstance(msg.value, bytes) else None,
        headers={str(k): (v if isinstance(v, bytes) else str(v).encode()) for k, v in header_map.items()},
        consumer=consumer,
        error_type=error_type,
        error_message=error_message[:4000],
        failed_at=now_ms(),
    )
