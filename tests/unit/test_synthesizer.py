"""The synthesis step with a zero-cost engine: results, failures and refusals per item."""

from __future__ import annotations

from pathlib import Path

from schemas.codec import Codecs
from stream_workers.engine.null_engine import NullEngine
from stream_workers.synthesis import Synthesizer
from voicenote.audio import wav_info
from voicenote.settings import StorageSettings
from voicenote.storage.local import LocalAudioStore


def _request(job_id: str, text: str, **extra: object) -> dict:
    return {"job_id": job_id, "created_at": 1_000, "text": text, **extra}


async def test_poisoned_item_fails_alone_and_garbage_is_refused(tmp_path: Path) -> None:
    codecs = Codecs()
    synth = Synthesizer(NullEngine(fail_marker="POISON"), codecs, LocalAudioStore(tmp_path), StorageSettings(local_dir=tmp_path))
    values = [
        codecs.request.encode(_request("ok_1", "fine")),
        b"garbage",
        codecs.request.encode(_request("bad_1", "POISON pill")),
        codecs.request.encode(_request("ok_2", "also fine")),
        codecs.request.encode(_request("inv_1", "x", speed=10.0)),
    ]
    outcome = await synth.process(values, batch_started_ms=2_000, batch_wait_ms=5)
    by_job = {r["job_id"]: r for r in outcome.results}
    assert [r.index for r in outcome.refused] == [1]
    assert outcome.refused[0].reason == "undecodable"
    assert by_job["ok_1"]["status"] == by_job["ok_2"]["status"] == "succeeded"
    assert wav_info(by_job["ok_1"]["audio"])[0] == 22050
    assert by_job["ok_1"]["batch_size"] == 3  # the three valid requests went to the engine together
    assert by_job["ok_1"]["queued_ms"] == 1_000
    assert by_job["bad_1"]["status"] == "failed" and by_job["bad_1"]["error_code"] == "test_poison"
    assert by_job["inv_1"]["status"] == "failed" and by_job["inv_1"]["error_code"] == "invalid_request"
    assert "speed" in by_job["inv_1"]["error_message"]


async def test_audio_above_the_threshold_is_claim_checked(tmp_path: Path) -> None:
    codecs = Codecs()
    store = LocalAudioStore(tmp_path)
    synth = Synthesizer(NullEngine(seconds=2.0), codecs, store, StorageSettings(local_dir=tmp_path, claim_check_bytes=1024))
    outcome = await synth.process([codecs.request.encode(_request("big_1", "long"))], 0, 0)
    result = outcome.results[0]
    assert result["audio"] is None if "audio" in result else True
    assert result["audio_ref"] == "audio/claims/_1/big_1.wav"
    stored = await store.get(result["audio_ref"])
    assert wav_info(stored) == (22050, 44100)
    # The event stays small: it carries the reference, not the bytes.
    assert len(codecs.result.encode(result)) < 1024
