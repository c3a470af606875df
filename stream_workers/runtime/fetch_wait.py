"""How long a worker's fetch may park on the broker: short while records flow, long once the consumer is idle.

Tansu (the embedded broker) does not wake a parked fetch when a record arrives: it re-reads every partition
of the fetch at intervals within the wait (after half of it, then half of what is left, ...) and answers
when it finds data or the wait runs out. A short wait keeps each hop quick (about a fifth of the wait,
docs/architecture.md), but an idle consumer then costs the broker a storage read per partition many times
a second: with a 100 ms wait, the idle one-machine stack used a fifth of a core (issue 24,
results/broker_stack_4x2.json), most of it in Tansu, its S3 server, and the workers answering their own
empty fetches.

:class:`FetchWaitPolicy` keeps the short wait while records arrive and switches to ``idle_ms`` once none
has come for ``idle_after_seconds``. The first record after a quiet spell is then found at the broker's next
read of its partition: up to half the idle wait later (the price, paid once per quiet spell, by the
first hop only: the next fetch goes out with the short wait again). Against Kafka, which answers a parked
fetch as soon as data arrives, a long wait costs nothing, so production leaves ``idle_ms`` unset.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class FetchWaitPolicy:
    """The fetch wait to use next, from whether the last fetch returned records. Thread-safe enough for its
    one caller (the consumer thread); the wait it returns is a plain int the fetcher reads per request."""

    def __init__(self, busy_ms: int, idle_ms: int | None, idle_after_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if idle_ms is not None and idle_ms < busy_ms:
            raise ValueError(f"the idle fetch wait ({idle_ms} ms) must not be shorter than the busy one ({busy_ms} ms)")
        self.busy_ms, self.idle_ms, self.idle_after = busy_ms, idle_ms, idle_after_seconds
        self._clock = clock
        self._last_records = clock()

    def observe(self, got_records: bool) -> int:
        """Note one fetch's outcome; the wait for the next fetch request."""
        now = self._clock()
        if got_records:
            self._last_records = now
            return self.busy_ms
        if self.idle_ms is not None and now - self._last_records >= self.idle_after:
            return self.idle_ms
        return self.busy_ms

    @property
    def idle(self) -> bool:
        """No record for ``idle_after_seconds`` (whether or not an idle wait is set)."""
        return self._clock() - self._last_records >= self.idle_after
