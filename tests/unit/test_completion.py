"""The storage step's pure outcomes (no S3): what a result that needs no upload becomes."""

from pathlib import Path

from schemas.events import SynthesisResult
from stream_workers.completion.storage import Storer
from voicenote.settings import StorageSettings
from voicenote.storage.local import LocalAudioStore


async def test_a_cancelled_result_becomes_a_cancelled_completion(tmp_path: Path) -> None:
    storer = Storer(LocalAudioStore(tmp_path), StorageSettings(local_dir=tmp_path))
    completion = await storer.complete(SynthesisResult(
        job_id="j1", status="cancelled", created_at=1, synthesized_at=2, format="wav",
        error_code="cancelled", error_message="the job was cancelled before synthesis"))
    assert completion.status == "cancelled"
    assert completion.error_code == "cancelled"
    assert completion.audio_key is None
