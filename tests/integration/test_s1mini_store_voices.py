"""S1-mini voices registered in the audio store (moto's S3 server), through the worker's admission and the
tiny checkpoint's engine: the reference is encoded once, its codes written back and put in the prompt."""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas.codec import Codecs
from stream_workers.engine import _codec_config
from stream_workers.engine.null_engine import NullEngine
from stream_workers.engine.s1mini import S1MiniEngine, S1MiniSettings, tiny_checkpoint
from stream_workers.engine.s1mini.codec_encoder import checkpoint_fingerprint, load_codec_encoder
from stream_workers.engine.s1mini.voices import read_wav, voice_key
from stream_workers.synthesis.synthesizer import Segment, Synthesizer
from voicenote.settings import Settings, StorageBackend, SynthesisSettings
from voicenote.storage.s3 import S3AudioStore

pytestmark = pytest.mark.integration

VOICE = "vc_" + "ab12" * 6
TRANSCRIPT = "This is my reference voice."


def request(job_id: str, text: str, voice: str) -> dict[str, Any]:
    return {"job_id": job_id, "created_at": int(time.time() * 1000), "text": text, "voice": voice, "format": "wav",
            "speed": 1.0, "model": "s1-mini", "temperature": 0.0, "top_p": None, "repetition_penalty": None, "seed": 1,
            "instructions": None, "webhook_url": None, "priority": "batch", "deadline_at": None, "batch_id": None,
            "trace_parent": None, "attributes": {}}


def reference_wav(seconds: float = 1.5) -> bytes:
    t = np.arange(int(44100 * seconds)) / 44100
    chirp = 0.5 * np.sin(2 * np.pi * (150 + 300 * t) * t)  # changes over time, so its codes do too
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes((chirp * 32767).astype("<i2").tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint.write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> Iterator[S1MiniEngine]:
    eng = S1MiniEngine(S1MiniSettings(checkpoint_dir=str(tiny_dir), codec_config=_codec_config(tiny_dir), max_new_tokens=6,
                                      on_max_tokens="truncate", codec_process="thread", slots=2))
    try:
        yield eng
    finally:
        eng.close()


@pytest.fixture
async def s3(settings: Settings) -> AsyncIterator[S3AudioStore]:
    store = S3AudioStore(settings.storage.model_copy(update={"backend": StorageBackend.s3}))
    await store.provision()
    try:
        yield store
    finally:
        await store.close()


async def register(store: S3AudioStore, voice_id: str) -> bytes:
    wav = reference_wav()
    meta = {"voice_id": voice_id, "owner": "anonymous", "name": "mine", "transcript": TRANSCRIPT, "sample_rate": 44100,
            "duration_s": 1.5, "created_at_ms": int(time.time() * 1000), "ephemeral": False}
    await store.put(voice_key(voice_id, "reference.wav"), wav, "audio/wav")
    await store.put(voice_key(voice_id, "meta.json"), json.dumps(meta).encode(), "application/json")
    return wav


def synthesizer(engine: Any, store: S3AudioStore, settings: Settings) -> Synthesizer:
    return Synthesizer(engine, Codecs(), store, settings.storage, SynthesisSettings(), None)


async def test_registered_voice_is_encoded_once_and_its_codes_reach_the_prompt(
        engine: S1MiniEngine, s3: S3AudioStore, settings: Settings, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wav = await register(s3, VOICE)
    synth = synthesizer(engine, s3, settings)
    admitted = await synth.admit([Codecs().request.encode(request("job_vc_1", "Say this with my voice.", VOICE))])
    assert admitted.results == [] and len(admitted.jobs) == 1
    store_voices = engine.voice_registry.store
    assert store_voices is not None and store_voices.encodes == 1

    # the codes were written back under the checkpoint's fingerprint, and are the encoder's codes of the clip
    fp = checkpoint_fingerprint(tiny_dir / "codec.pth")
    stored = np.load(io.BytesIO(await s3.get(voice_key(VOICE, f"codes-{fp}.npy"))), allow_pickle=False)
    want = load_codec_encoder(tiny_dir / "codec.pth", engine.codec_config).encode_clip(read_wav(wav))
    assert stored.shape == (10, -(-int(1.5 * 44100) // 2048)) and (stored == want).all()
    assert len(np.unique(stored[0])) > 1

    # synthesize: the prompt the engine decodes from carries the transcript and those codes
    prompts: list[Any] = []
    build = engine.prompts.build

    def spy(text: str, voice: str = "default") -> Any:
        prompts.append((voice, build(text, voice)))
        return prompts[-1][1]

    monkeypatch.setattr(engine.prompts, "build", spy)
    job = admitted.jobs[0][1]
    segments = [Segment(job, i, text) for i, text in enumerate(job.texts)]
    results = await asyncio.to_thread(synth.run_batch, segments)
    assert all(r.ok for r in results), [r.error for r in results]
    assert prompts and all(v == VOICE for v, _ in prompts)
    prompt = prompts[0][1]
    tok = engine.tokenizer
    start = 1 + len(engine.prompts.text_ids(TRANSCRIPT))
    assert prompt[0, 1:start].tolist() == engine.prompts.text_ids(TRANSCRIPT)
    frames = stored.shape[1]
    assert (prompt[1:, start:start + frames].numpy() == stored).all()
    assert (prompt[0, start:start + frames].numpy() == stored[0] + tok.semantic_begin_id).all()
    done = await synth.finish(job)
    assert done.status == "succeeded", done.error_message

    # a second use: from memory; another worker (a restart): reads the codes, encodes nothing
    again = await synth.admit([Codecs().request.encode(request("job_vc_2", "Again.", VOICE))])
    assert len(again.jobs) == 1 and store_voices.encodes == 1 and store_voices.hits == 1
    synthesizer(engine, s3, settings)  # attaches a fresh store source, as a new worker has
    fresh = engine.voice_registry.store
    assert fresh is not store_voices and fresh is not None
    third = await synthesizer(engine, s3, settings).admit([Codecs().request.encode(request("job_vc_3", "Once more.", VOICE))])
    fresh = engine.voice_registry.store
    assert fresh is not None
    assert len(third.jobs) == 1 and fresh.encodes == 0 and fresh.fetches == 1
    assert (fresh.lookup(VOICE).codes == stored).all()  # type: ignore[union-attr]


async def test_unknown_registered_voice_fails_with_voice_not_found(engine: S1MiniEngine, s3: S3AudioStore,
                                                                   settings: Settings) -> None:
    synth = synthesizer(engine, s3, settings)
    admitted = await synth.admit([Codecs().request.encode(request("job_vc_x", "Hello.", "vc_" + "0" * 24)),
                                  Codecs().request.encode(request("job_vc_y", "Hello.", "default"))])
    assert [i for i, _ in admitted.jobs] == [1]  # the built-in voice goes on
    [(i, result)] = admitted.results
    assert i == 0 and result.status == "failed" and result.error_code == "voice_not_found"
    assert "vc_000000000000000000000000" in (result.error_message or "")


async def test_registered_voice_on_an_engine_without_them_is_a_model_mismatch(s3: S3AudioStore, settings: Settings) -> None:
    await register(s3, VOICE)
    synth = synthesizer(NullEngine(), s3, settings)
    admitted = await synth.admit([Codecs().request.encode(request("job_vc_n", "Hello.", VOICE))])
    [(_, result)] = admitted.results
    assert admitted.jobs == [] and result.error_code == "voice_model_mismatch"
