"""A batch engine (Piper, null) as a :class:`ContinuousEngine`.

A batch engine cannot take rows into a running batch. One thread takes up to ``slots`` waiting inputs,
runs them as one batch (similar lengths together when more wait, :func:`pick_batch`), resolves each
input's future, and starts on the next. While a batch runs, new submissions wait for the next one; an
idle adapter starts a submission at once. ``free_slots`` counts room for two batches, the running one
and the next one forming, so a caller that keeps it filled keeps the engine busy without the engine
ever waiting for the caller between batches; the count changes only on ``submit`` and when futures
resolve, so a caller woken by its futures sees it current.

Failures stay small as :func:`synthesize_resilient` keeps them: an out-of-memory batch is split, a
batch that raises is retried item by item, and a failing item resolves with its error, alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future

from stream_workers.engine.base import ContinuousEngine, SpeechEngine, SynthesisInput, SynthesisResult
from stream_workers.synthesis.batching import Pending, pick_batch
from stream_workers.synthesis.synthesizer import synthesize_resilient

log = logging.getLogger(__name__)


class SlotAdapter:
    """Runs a :class:`SpeechEngine` on its own thread, one batch of up to ``slots`` rows at a time."""

    def __init__(self, engine: SpeechEngine, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.engine = engine
        self.name = engine.name
        self.model_version = engine.model_version
        self.sample_rate = engine.sample_rate
        self.slots = slots
        self._cond = threading.Condition()
        self._waiting: list[Pending[tuple[SynthesisInput, Future[SynthesisResult]]]] = []
        self._running = 0
        self._closing = False
        self.batches: list[int] = []  # sizes of the batches run, for tests and benchmarks
        self._thread = threading.Thread(target=self._run, name=f"engine-{engine.name}", daemon=True)
        self._thread.start()

    def voices(self) -> list[str]:
        return self.engine.voices()

    def free_slots(self) -> int:
        with self._cond:
            return max(0, 2 * self.slots - self._running - len(self._waiting))

    def busy(self) -> bool:
        """A batch is running or waiting."""
        with self._cond:
            return bool(self._running or self._waiting)

    def submit(self, inputs: Sequence[SynthesisInput]) -> list[Future[SynthesisResult]]:
        futures: list[Future[SynthesisResult]] = [Future() for _ in inputs]
        with self._cond:
            if self._closing:
                raise RuntimeError("the engine is closed")
            for item, future in zip(inputs, futures, strict=True):
                self._waiting.append(Pending((item, future), len(item.text)))
            self._cond.notify()
        return futures

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _take(self) -> list[tuple[SynthesisInput, Future[SynthesisResult]]]:
        """The next batch from the waiting rows (holding the lock); empty if none wait."""
        chosen = pick_batch(self._waiting, self.slots)
        taken = set(chosen)
        batch = [self._waiting[i].item for i in chosen]
        self._waiting = [p for i, p in enumerate(self._waiting) if i not in taken]
        self._running = len(batch)
        return batch

    def _run(self) -> None:
        batch: list[tuple[SynthesisInput, Future[SynthesisResult]]] = []
        while True:
            if not batch:
                with self._cond:
                    while not self._waiting and not self._closing:
                        self._cond.wait()
                    if not self._waiting:
                        return  # closing, nothing in hand
                    batch = self._take()
            futures = [future for _, future in batch if future.set_running_or_notify_cancel()]
            inputs = [item for item, future in batch if not future.cancelled()]
            try:
                results = synthesize_resilient(self.engine, inputs)
            except BaseException as exc:
                # synthesize_resilient turns engine failures into per-row errors; what escapes it is a
                # bug or an interrupt: every row in hand fails loudly rather than waiting forever.
                log.exception("engine thread failed on a batch of %d", len(inputs))
                for future in futures:
                    future.set_exception(exc)
                raise
            self.batches.append(len(inputs))
            # Take the next batch before resolving this one, so it starts without waiting on the caller.
            with self._cond:
                batch = self._take() if self._waiting else []
                if not batch:
                    self._running = 0
            for future, result in zip(futures, results, strict=True):
                future.set_result(result)


def continuous(engine: SpeechEngine | ContinuousEngine, slots: int) -> ContinuousEngine:
    """``engine`` itself if it keeps slots natively, else a :class:`SlotAdapter` of ``slots`` rows."""
    if callable(getattr(engine, "submit", None)) and callable(getattr(engine, "free_slots", None)):
        return engine  # type: ignore[return-value]
    return SlotAdapter(engine, slots)  # type: ignore[arg-type]
