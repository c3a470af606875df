"""The Piper GPU path (padded batch, per-row lengths from the duration output) run on the CPU:
batched audio equals one-at-a-time audio."""

import numpy as np
import pytest

from stream_workers.engine.base import SynthesisInput

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def engine():  # type: ignore[no-untyped-def]
    from stream_workers.engine.piper_engine import PiperBatchedEngine

    # Without noise the voice is deterministic, so batched and single runs can be compared sample by sample.
    return PiperBatchedEngine.joe(threads=2, noise_scale=0.0, noise_w_scale=0.0)


def test_batched_audio_matches_one_at_a_time(engine) -> None:  # type: ignore[no-untyped-def]
    texts = ["Hi.", "This sentence is much longer than its batch-mates, so they are padded to it. It has two.",
             "A middle one, of middling length.", "Slow down.", "Speed up."]
    inputs = [SynthesisInput(job_id=str(i), text=t, speed=0.8 if t == "Slow down." else 1.0) for i, t in enumerate(texts)]
    batched = engine.synthesize_batch(inputs)
    for item, together in zip(inputs, batched, strict=True):
        alone = engine.synthesize_batch([item])[0]
        assert together.ok and alone.ok
        assert len(together.audio) == len(alone.audio)  # exact, from the duration output
        assert float(np.max(np.abs(together.audio - alone.audio))) < 2e-3
        assert float(np.sqrt(np.mean(alone.audio**2))) > 0.02  # speech, not silence
    lengths = [len(r.audio) for r in batched]
    assert lengths[1] > 4 * lengths[0]


def test_a_bad_item_fails_alone_in_a_batch(engine) -> None:  # type: ignore[no-untyped-def]
    results = engine.synthesize_batch([SynthesisInput(job_id="a", text="Fine."),
                                       SynthesisInput(job_id="b", text="Fine.", voice="nobody")])
    assert results[0].ok
    assert results[1].error is not None and results[1].error.code == "unknown_voice"


def test_batched_word_timestamps_match_one_at_a_time(engine) -> None:  # type: ignore[no-untyped-def]
    texts = ["Short one.", "A longer item, with a comma. And a second sentence after it!", "Numbers: 42 and $7."]
    inputs = [SynthesisInput(job_id=str(i), text=t, timestamps=True) for i, t in enumerate(texts)]
    batched = engine.synthesize_batch(inputs)
    for item, together in zip(inputs, batched, strict=True):
        alone = engine.synthesize_batch([item])[0]
        assert together.words is not None and alone.words is not None
        assert [w.word for w in together.words] == item.text.split()
        duration = len(together.audio) / engine.sample_rate
        assert 0 <= together.words[0].start and together.words[-1].end <= duration
        assert duration - together.words[-1].end < 0.35
        assert all(a.end <= b.start for a, b in zip(together.words, together.words[1:], strict=False))
        for a, b in zip(together.words, alone.words, strict=True):  # padding in the batch moves no word
            assert abs(a.start - b.start) < 0.02 and abs(a.end - b.end) < 0.02
    assert engine.synthesize_batch([SynthesisInput(job_id="x", text="Not asked.")])[0].words is None
