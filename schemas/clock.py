"""The contract's clock: event timestamps (Avro ``timestamp-millis``) are integer epoch milliseconds."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Now, as the events and job records spell a time."""
    return int(time.time() * 1000)
