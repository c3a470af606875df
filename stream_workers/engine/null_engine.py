"""A zero-cost engine: a short tone per item, no model. For pipeline benchmarks and tests of the
plumbing; it measures what the pipeline costs with the engine taken out."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from stream_workers.engine.base import EngineError, SynthesisInput, SynthesisResult


class NullEngine:
    name = "null"
    model_version = "tone-1"

    def __init__(self, sample_rate: int = 22050, seconds: float = 0.25, fail_marker: str | None = None,
                 batch_seconds: float = 0.0) -> None:
        self.sample_rate = sample_rate
        self._batch_seconds = batch_seconds  # a fixed cost per batch, as on a GPU (fault tests need a batch in hand)
        t = np.arange(int(sample_rate * seconds), dtype=np.float32) / sample_rate
        self._tone = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        # Items whose text contains this marker fail (lets tests poison one item of a batch).
        self._fail_marker = fail_marker

    def voices(self) -> list[str]:
        return ["default"]

    def synthesize_batch(self, inputs: Sequence[SynthesisInput]) -> list[SynthesisResult]:
        if self._batch_seconds:
            time.sleep(self._batch_seconds)
        results = []
        for item in inputs:
            if self._fail_marker and self._fail_marker in item.text:
                error = EngineError("poisoned input", code="test_poison")
                results.append(SynthesisResult(item.job_id, self.sample_rate, error=error))
            else:
                results.append(SynthesisResult(item.job_id, self.sample_rate, audio=self._tone))
        return results
