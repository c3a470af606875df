"""The slot adapter: a batch engine driven as a continuous one."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from stream_workers.engine.base import EngineOutOfMemory, SynthesisInput, SynthesisResult
from stream_workers.engine.null_engine import NullEngine
from stream_workers.engine.slots import SlotAdapter, continuous


class GatedEngine(NullEngine):
    """The null engine, recording its batches; a batch waits for ``gate`` (set: no wait)."""

    def __init__(self, *, oom_above: int = 64) -> None:
        super().__init__(sample_rate=1000, seconds=0.01, fail_marker="POISON")
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.seen: list[list[str]] = []
        self._oom_above = oom_above

    def synthesize_batch(self, inputs: Sequence[SynthesisInput]) -> list[SynthesisResult]:
        self.seen.append([i.job_id for i in inputs])
        if len(inputs) > self._oom_above:
            raise EngineOutOfMemory("too big")
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return super().synthesize_batch(inputs)


def _inputs(*texts: str) -> list[SynthesisInput]:
    return [SynthesisInput(job_id=t, text=t) for t in texts]


@pytest.fixture
def engine() -> GatedEngine:
    return GatedEngine()


def test_an_idle_adapter_starts_a_lone_row_at_once(engine: GatedEngine) -> None:
    adapter = SlotAdapter(engine, slots=8)
    [future] = adapter.submit(_inputs("alone"))
    assert future.result(timeout=10).ok
    assert engine.seen == [["alone"]]  # it did not wait for batch-mates
    adapter.close()


def test_rows_submitted_while_a_batch_runs_form_the_next_batch(engine: GatedEngine) -> None:
    engine.gate.clear()
    adapter = SlotAdapter(engine, slots=4)
    first = adapter.submit(_inputs("a"))
    assert engine.entered.wait(10)
    later = adapter.submit(_inputs("b", "c")) + adapter.submit(_inputs("d"))
    assert not any(f.done() for f in first + later)
    assert adapter.free_slots() == 2 * 4 - 1 - 3  # one running, three forming the next batch
    engine.gate.set()
    assert [f.result(timeout=10).job_id for f in first + later] == ["a", "b", "c", "d"]
    assert engine.seen == [["a"], ["b", "c", "d"]]
    adapter.close()


def test_more_waiting_than_slots_batch_by_similar_length(engine: GatedEngine) -> None:
    engine.gate.clear()
    adapter = SlotAdapter(engine, slots=2)
    adapter.submit(_inputs("x"))
    assert engine.entered.wait(10)
    texts = ["a" * 10, "b" * 300, "c" * 12, "d" * 290]
    futures = adapter.submit(_inputs(*texts))
    engine.gate.set()
    for f in futures:
        f.result(timeout=10)
    adapter.close()
    assert [sorted(len(t) for t in batch) for batch in engine.seen[1:]] == [[10, 12], [290, 300]]


def test_a_failing_row_fails_alone_and_an_oom_batch_is_split() -> None:
    engine = GatedEngine(oom_above=2)
    engine.gate.clear()
    adapter = SlotAdapter(engine, slots=4)
    adapter.submit(_inputs("warm"))
    assert engine.entered.wait(10)
    futures = adapter.submit(_inputs("ok1", "say POISON", "ok2", "ok3"))
    engine.gate.set()
    results = [f.result(timeout=10) for f in futures]
    adapter.close()
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[1].error is not None and results[1].error.code == "test_poison"
    assert [len(b) for b in engine.seen[1:3]] == [4, 2]  # the batch of four ran out of memory, then halves


def test_close_finishes_the_rows_in_hand_then_refuses_more(engine: GatedEngine) -> None:
    engine.gate.clear()
    adapter = SlotAdapter(engine, slots=2)
    futures = adapter.submit(_inputs("a", "b", "c"))
    assert engine.entered.wait(10)
    closer = threading.Thread(target=adapter.close)
    closer.start()
    engine.gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert all(f.result(timeout=0).ok for f in futures)
    with pytest.raises(RuntimeError):
        adapter.submit(_inputs("late"))


def test_a_native_continuous_engine_is_used_as_it_is(engine: GatedEngine) -> None:
    adapter = SlotAdapter(engine, slots=2)
    assert continuous(adapter, 8) is adapter
    wrapped = continuous(engine, 3)
    assert isinstance(wrapped, SlotAdapter) and wrapped.slots == 3 and wrapped.free_slots() == 6
    adapter.close()
    wrapped.close()
