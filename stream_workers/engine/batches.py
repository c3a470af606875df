"""How a batch engine's batches are formed and kept failure-small: the engine side of batching.

Decision (issue 20): split-and-retry of a failing batch belongs to the engine, not to the synthesis
side. :func:`synthesize_resilient` lives here, beside :func:`pick_batch`, and the slot adapter
(slots.py) is its caller on the serving path; the synthesis package imports both from here and keeps
no copy. A native continuous engine (S1-mini) keeps failures per row itself (an out-of-memory prefill
is retried row by row), so the loop above sees one shape of failure from every engine: a result
carrying its error.

Nothing here imports the worker (the import-linter contract ``engine-below-the-worker``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from stream_workers.engine.base import EngineError, EngineOutOfMemory, SpeechEngine, SynthesisInput, SynthesisResult

log = logging.getLogger(__name__)


class Waiting(Protocol):
    """An item waiting for a batch: its cost measure (``size``, e.g. characters) and its arrival time."""

    @property
    def size(self) -> int: ...

    @property
    def arrived(self) -> float: ...


def pick_batch(pool: Sequence[Waiting], max_batch: int, head: int | None = None) -> list[int]:
    """Indexes into ``pool`` of the next batch, in arrival order.

    ``head`` (by default the oldest item) is always in it, so nothing starves. When more than
    ``max_batch`` items wait, the rest are the ones closest to it in size: of the runs of ``max_batch``
    consecutive items in size order that contain the head, the one with the smallest spread of sizes,
    which is what padding to the longest item wastes.
    """
    if not pool:
        return []
    if len(pool) <= max_batch:
        return sorted(range(len(pool)), key=lambda i: pool[i].arrived)
    if head is None:
        head = min(range(len(pool)), key=lambda i: pool[i].arrived)
    order = sorted(range(len(pool)), key=lambda i: (pool[i].size, pool[i].arrived))
    pos = order.index(head)
    best_start, best_spread = 0, None
    for start in range(max(0, pos - max_batch + 1), min(pos, len(order) - max_batch) + 1):
        run = order[start : start + max_batch]
        spread = pool[run[-1]].size - pool[run[0]].size
        if best_spread is None or spread < best_spread:
            best_start, best_spread = start, spread
    chosen = order[best_start : best_start + max_batch]
    return sorted(chosen, key=lambda i: pool[i].arrived)


def synthesize_resilient(engine: SpeechEngine, inputs: Sequence[SynthesisInput]) -> list[SynthesisResult]:
    """``engine.synthesize_batch`` with failures kept small. Blocking; run it off the event loop.

    An out-of-memory batch is split in halves and each retried; a batch that raises is retried item by
    item; an item that failed next to others is retried alone. Only what still fails alone is a failure.
    """
    if not inputs:
        return []
    try:
        results = engine.synthesize_batch(inputs)
        if len(results) != len(inputs):
            raise EngineError(f"engine returned {len(results)} results for {len(inputs)} inputs")
    except EngineOutOfMemory as exc:
        if len(inputs) == 1:
            return [SynthesisResult(inputs[0].job_id, engine.sample_rate, error=exc)]
        mid = len(inputs) // 2
        log.warning("engine out of memory at batch %d; splitting into %d + %d", len(inputs), mid, len(inputs) - mid)
        return synthesize_resilient(engine, inputs[:mid]) + synthesize_resilient(engine, inputs[mid:])
    except Exception as exc:  # noqa: BLE001 - translated into per-item failures below, never dropped
        if len(inputs) == 1:
            log.warning("engine failed on %s: %s: %s", inputs[0].job_id, type(exc).__name__, exc)
            error = exc if isinstance(exc, EngineError) else EngineError(f"{type(exc).__name__}: {exc}")
            return [SynthesisResult(inputs[0].job_id, engine.sample_rate, error=error)]
        log.warning("engine failed on a batch of %d (%s: %s); retrying item by item", len(inputs), type(exc).__name__, exc)
        return [synthesize_resilient(engine, [item])[0] for item in inputs]
    if len(inputs) > 1:
        for i, result in enumerate(results):
            if not result.ok:
                results[i] = synthesize_resilient(engine, [inputs[i]])[0]
    return results
