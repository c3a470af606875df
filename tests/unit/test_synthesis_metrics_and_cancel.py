from pathlib import Path

from schemas.events import SynthesisResult
from stream_workers.completion import Storer
from stream_workers.metrics import SynthesisMetrics
from voicenote.settings import StorageSettings
from voicenote.storage.local import LocalAudioStore


def test_idle_fraction_is_idle_over_idle_plus_busy_and_is_exported() -> None:
    m = SynthesisMetrics()
    m.batch(size=8, fill_wait=0.1, engine_seconds=3.0, audio_seconds=6.0, waste=0.1)
    m.busy(3.0)
    m.idle(1.0)
    assert m.idle_fraction == 0.25
    text = m.render().decode()
    assert "voicenote_synthesis_engine_idle_fraction 0.25" in text
    assert "voicenote_synthesis_real_time_factor 0.5" in text
    assert 'voicenote_synthesis_batch_size_bucket{le="8.0"} 1.0' in text


async def test_a_cancelled_result_becomes_a_cancelled_completion(tmp_path: Path) -> None:
    storer = Storer(LocalAudioStore(tmp_path), StorageSettings(local_dir=tmp_path))
    completion = await storer.complete(SynthesisResult(
        job_id="j1", status="cancelled", created_at=1, synthesized_at=2, format="wav",
        error_code="cancelled", error_message="the job was cancelled before synthesis"))
    assert completion.status == "cancelled"
    assert completion.error_code == "cancelled"
    assert completion.audio_key is None
