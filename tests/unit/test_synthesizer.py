"""The synthesis step without Redis: admission per item, and the claim check for large audio."""

from __future__ import annotations

from pathlib import Path

from schemas.codec import Codecs
from stream_workers.engine.null_engine import NullEngine
from stream_workers.synthesis import Synthesizer
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
