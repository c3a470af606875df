"""The engine interfaces: inputs in, one result per input out.

Two interfaces, one for each kind of engine, and one of them for the worker:

* :class:`SpeechEngine` (a Protocol): a *batch* engine. ``synthesize_batch`` takes a batch and returns
  when all of it is done. Piper and the null engine are batch engines.
* :class:`ContinuousEngine` (an ABC): an engine that keeps live rows in slots. It is the one interface
  the synthesis loop drives. S1-mini implements it natively; a batch engine is driven through
  :class:`~stream_workers.engine.slots.SlotAdapter`, and :func:`~stream_workers.engine.slots.continuous`
  gives the worker a ContinuousEngine for any engine ``build_engine`` returns.

A failing item is reported in its own result, never by raising for the whole batch, so its batch-mates
still succeed. The engine package imports nothing of the worker (stream_workers' other packages): the
import-linter contract ``engine-below-the-worker`` holds it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from voicenote.captions import WordTime
from voicenote.errors import VoicenoteError


class EngineError(VoicenoteError):
    """An engine failure with a machine-readable code (it ends the job as ``failed``)."""

    code = "engine_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class EngineOutOfMemory(EngineError):
    """The batch did not fit in device memory; the caller splits it and retries."""

    code = "engine_out_of_memory"


class UnknownVoice(EngineError):
    code = "unknown_voice"


@dataclass(frozen=True)
class SynthesisInput:
    """One item of a batch: what to say and how."""

    job_id: str
    text: str
    voice: str = "default"
    speed: float = 1.0
    temperature: float | None = None  # None: the engine's default; 0 means greedy where supported
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    instructions: str | None = None
    timestamps: bool = False  # also time each word of ``text`` (engines that cannot leave ``words`` None)
    trace_parent: str | None = None  # the job's W3C traceparent: the batch's span continues it (voicenote/tracing.py)


@dataclass
class SynthesisResult:
    """The outcome for one input: mono float32 audio in [-1, 1], or an error."""

    job_id: str
    sample_rate: int
    audio: np.ndarray | None = None
    error: EngineError | None = None
    extra: dict[str, float] = field(default_factory=dict)
    words: list[WordTime] | None = None  # asked-for word timestamps, seconds from the start of ``audio``; None: none

    @property
    def ok(self) -> bool:
        return self.error is None and self.audio is not None


class SpeechEngine(Protocol):
    """A batched speech engine. ``synthesize_batch`` is blocking; the agent runs it off the loop."""

    name: str
    model_version: str
    sample_rate: int

    def voices(self) -> list[str]:
        """The voice names this engine accepts."""
        ...

    def synthesize_batch(self, inputs: Sequence[SynthesisInput]) -> list[SynthesisResult]:
        """Synthesize every input; results are in input order, one per input."""
        ...


class ContinuousEngine(ABC):
    """An engine that keeps live rows in slots (iteration-level batching): what the synthesis loop drives.

    Submitted inputs join the running decode at the next step boundary (an idle engine starts them at
    once); a finished row leaves its slot at once and its future resolves without waiting for its
    batch-mates. The futures are ``concurrent.futures.Future`` objects resolved from the engine's own
    thread, so their done-callbacks run there: an asyncio caller hands each result to its loop with
    ``loop.call_soon_threadsafe`` (as synthesis_loop.py does). A failing row resolves with a result
    carrying its error, never raises.
    """

    name: str
    model_version: str
    sample_rate: int
    slots: int  # the most rows decoding at once

    @abstractmethod
    def voices(self) -> list[str]:
        """The voice names this engine accepts."""

    @abstractmethod
    def free_slots(self) -> int:
        """Slots not taken by live or queued rows (back-pressure for admission)."""

    @abstractmethod
    def submit(self, inputs: Sequence[SynthesisInput]) -> list[Future[SynthesisResult]]:
        """Queue ``inputs`` for decoding; one future per input, in input order."""

    @abstractmethod
    def close(self) -> None:
        """Finish the rows in hand, then stop the engine's threads."""
