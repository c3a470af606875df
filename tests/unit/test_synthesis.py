"""The synthesis step without Redis: admission per item, the claim check for large audio, and a failing batch
kept small (per-item retries, out-of-memory splits)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from schemas.codec import Codecs
from stream_workers.engine.base import EngineError, EngineOutOfMemory, SynthesisInput, SynthesisResult
from stream_workers.engine.batches import synthesize_resilient
from stream_workers.engine.null_engine import NullEngine
from stream_workers.synthesis.synthesizer import Synthesizer
from voicenote.audio import wav_info
from voicenote.settings import StorageSettings, SynthesisSettings
from voicenote.storage.local import LocalAudioStore


def _request(job_id: str, text: str, **extra: object) -> dict:
    return {"job_id": job_id, "created_at": 1_000, "text": text, **extra}


def _synth(tmp_path: Path, engine: NullEngine, **storage: object) -> Synthesizer:
    return Synthesizer(engine, Codecs(), LocalAudioStore(tmp_path), StorageSettings(local_dir=tmp_path, **storage),  # type: ignore[arg-type]
                       SynthesisSettings())


async def test_admission_refuses_garbage_fails_invalid_requests_and_accepts_the_rest(tmp_path: Path) -> None:
    codecs = Codecs()
    synth = _synth(tmp_path, NullEngine())
    admission = await synth.admit([
        codecs.request.encode(_request("ok_1", "fine")),
        b"garbage",
        codecs.request.encode(_request("inv_1", "x", speed=10.0)),
        codecs.request.encode(_request("bad id!", "x")),
    ])
    assert [(r.index, r.reason) for r in admission.refused] == [(1, "undecodable"), (3, "invalid_request")]
    [(index, failed)] = admission.results
    assert index == 2 and failed.status == "failed" and failed.error_code == "invalid_request"
    assert "speed" in (failed.error_message or "")
    assert [(i, job.job_id) for i, job in admission.jobs] == [(0, "ok_1")]


async def test_audio_above_the_threshold_is_claim_checked(tmp_path: Path) -> None:
    codecs = Codecs()
    synth = _synth(tmp_path, NullEngine(seconds=2.0), claim_check_bytes=1024)
    admission = await synth.admit([codecs.request.encode(_request("big_1", "long"))])
    [(_, job)] = admission.jobs
    synth.run_batch(job.segments())
    result = await synth.finish(job)
    assert result.status == "succeeded"
    assert result.audio is None
    assert result.audio_ref == "audio/claims/_1/big_1.wav"
    assert wav_info(await LocalAudioStore(tmp_path).get(result.audio_ref)) == (22050, 44100)
    assert len(codecs.result.encode_event(result)) < 1024  # the event carries the reference, not the bytes


class RecordingEngine:
    """Fails like a real engine can: whole-batch exceptions, OOM above a size, one poisoned item."""

    name = "recording"
    model_version = "1"
    sample_rate = 1000

    def __init__(self, *, oom_above: int = 64, raise_on: str | None = None, fail_in_batch_only: str | None = None) -> None:
        self.calls: list[int] = []
        self._oom_above = oom_above
        self._raise_on = raise_on
        self._fail_in_batch_only = fail_in_batch_only

    def voices(self) -> list[str]:
        return ["default"]

    def synthesize_batch(self, inputs: Sequence[SynthesisInput]) -> list[SynthesisResult]:
        self.calls.append(len(inputs))
        if len(inputs) > self._oom_above:
            raise EngineOutOfMemory(f"{len(inputs)} items do not fit")
        if self._raise_on and any(self._raise_on in i.text for i in inputs):
            raise RuntimeError("CUDA error: device-side assert triggered")
        out = []
        for item in inputs:
            if self._fail_in_batch_only and self._fail_in_batch_only in item.text and len(inputs) > 1:
                out.append(SynthesisResult(item.job_id, self.sample_rate, error=EngineError("padding artefact")))
            else:
                out.append(SynthesisResult(item.job_id, self.sample_rate, audio=np.full(len(item.text), 0.1, dtype=np.float32)))
        return out


def _inputs(texts: list[str]) -> list[SynthesisInput]:
    return [SynthesisInput(job_id=f"j{i}", text=t) for i, t in enumerate(texts)]


def test_a_raising_batch_is_retried_item_by_item_and_only_the_poison_fails() -> None:
    engine = RecordingEngine(raise_on="POISON")
    results = synthesize_resilient(engine, _inputs(["a", "bb", "POISON", "dddd"]))
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].error is not None and results[2].error.code == "engine_error"
    assert "device-side assert" in str(results[2].error)
    assert [len(r.audio) for r in results if r.audio is not None] == [1, 2, 4]
    assert engine.calls == [4, 1, 1, 1, 1]


def test_an_out_of_memory_batch_is_split_until_it_fits() -> None:
    engine = RecordingEngine(oom_above=2)
    results = synthesize_resilient(engine, _inputs(["a"] * 8))
    assert all(r.ok for r in results)
    assert [r.job_id for r in results] == [f"j{i}" for i in range(8)]
    assert engine.calls == [8, 4, 2, 2, 4, 2, 2]


def test_a_single_item_that_does_not_fit_fails_with_out_of_memory() -> None:
    engine = RecordingEngine(oom_above=0)
    results = synthesize_resilient(engine, _inputs(["a", "b"]))
    assert [r.error.code for r in results if r.error] == ["engine_out_of_memory", "engine_out_of_memory"]


def test_an_item_that_failed_beside_others_is_retried_alone() -> None:
    engine = RecordingEngine(fail_in_batch_only="flaky")
    results = synthesize_resilient(engine, _inputs(["a", "flaky", "c"]))
    assert all(r.ok for r in results)
    assert engine.calls == [3, 1]


def test_per_item_errors_from_the_engine_stay_per_item() -> None:
    engine = NullEngine(sample_rate=1000, seconds=0.01, fail_marker="BAD")
    results = synthesize_resilient(engine, _inputs(["ok", "BAD", "ok"]))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error is not None and results[1].error.code == "test_poison"
