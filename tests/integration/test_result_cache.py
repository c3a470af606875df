"""The result cache: an identical request reuses stored audio without an engine call (real Redis and
storage), and a request that opts out is synthesized afresh."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import pytest

from schemas.codec import Codecs
from schemas.events import SynthesisResult as SynthesisResultEvent
from stream_workers.completion.storage import Storer
from stream_workers.engine.base import SynthesisInput, SynthesisResult
from stream_workers.engine.null_engine import NullEngine
from stream_workers.runtime.result_cache import ResultCache, cache_key
from stream_workers.synthesis.synthesizer import Synthesizer
from voicenote.settings import Settings, SynthesisSettings
from voicenote.storage.local import LocalAudioStore

pytestmark = pytest.mark.integration


async def _process(synth: Synthesizer, values: list[bytes]) -> list[SynthesisResultEvent]:
    """Admission, then the engine for what the cache did not answer (as the synthesis loop does)."""
    admission = await synth.admit(values)
    results = [result for _, result in admission.results]
    for _, job in admission.jobs:
        synth.run_batch(job.segments())
        results.append(await synth.finish(job))
    return results


class CountingEngine(NullEngine):
    """The null engine, counting the inputs it is asked to synthesize."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def synthesize_batch(self, inputs: Sequence[SynthesisInput]) -> list[SynthesisResult]:
        self.calls += [i.job_id.split("#")[0] for i in inputs]  # segments are "<job_id>#<n>"
        return super().synthesize_batch(inputs)


def _request(job_id: str, text: str = "The same words twice.", **extra: object) -> dict:
    return {"job_id": job_id, "created_at": int(time.time() * 1000), "text": text, "voice": "default", "format": "wav",
            "speed": 1.0, "model": "default", "temperature": None, "top_p": None, "repetition_penalty": None, "seed": None,
            "instructions": None, "webhook_url": None, "priority": "batch", "deadline_at": None, "batch_id": None,
            "trace_parent": None, "attributes": {}, **extra}


@pytest.fixture
async def cache(settings: Settings) -> AsyncIterator[ResultCache]:
    c = ResultCache.from_url(settings.redis.url, settings.redis.key_prefix, settings.cache.ttl_seconds)
    try:
        yield c
    finally:
        await c.close()


async def test_identical_request_reuses_stored_audio_without_the_engine(settings: Settings, cache: ResultCache) -> None:
    codecs = Codecs()
    engine = CountingEngine()
    store = LocalAudioStore(settings.storage.local_dir)
    synth = Synthesizer(engine, codecs, store, settings.storage, SynthesisSettings(), cache=cache)
    storer = Storer(store, settings.storage, public_base_url="http://api", cache=cache)

    first = await _process(synth, [codecs.request.encode(_request("job_cachefirst"))])
    assert engine.calls == ["job_cachefirst"]
    assert first[0].cache_key
    first_done = await storer.complete(codecs.result.decode_event(codecs.result.encode_event(first[0])))
    assert first_done.cache_hit is False

    second = await _process(synth, [codecs.request.encode(_request("job_cachesecond"))])
    assert engine.calls == ["job_cachefirst"], "a cache hit must not call the engine"
    hit = codecs.result.decode_event(codecs.result.encode_event(second[0]))
    assert hit.cache_hit is True
    assert hit.audio_ref == first_done.audio_key
    second_done = await storer.complete(hit)
    assert second_done.status == "succeeded" and second_done.cache_hit is True
    assert second_done.audio_key != first_done.audio_key  # the job gets its own object
    assert await store.get(second_done.audio_key) == await store.get(first_done.audio_key)
    assert second_done.duration_ms == first_done.duration_ms > 0
    assert cache.hits == 1 and cache.misses == 1 and cache.hit_ratio == 0.5

    # Opt-out, and a different text: both go to the engine.
    third = await _process(synth, [codecs.request.encode(_request("job_cacheoptout", use_cache=False)),
                                   codecs.request.encode(_request("job_cacheother", text="Other words."))])
    assert engine.calls == ["job_cachefirst", "job_cacheoptout", "job_cacheother"]
    assert [r.cache_hit for r in third] == [False, False]


def test_cache_key_covers_what_changes_the_audio() -> None:
    base = _request("job_a")
    key = cache_key(base, "piper", "joe-medium-1")
    assert cache_key(_request("job_b"), "piper", "joe-medium-1") == key  # job identity does not matter
    assert cache_key({**base, "webhook_url": "https://x.example/hook"}, "piper", "joe-medium-1") == key
    for change in ({"text": "other"}, {"voice": "v2"}, {"format": "mp3"}, {"speed": 1.5}, {"temperature": 0.3},
                   {"top_p": 0.9}, {"repetition_penalty": 1.1}, {"seed": 7}, {"instructions": "whisper"}):
        assert cache_key({**base, **change}, "piper", "joe-medium-1") != key, change
    assert cache_key(base, "s1mini", "joe-medium-1") != key
    assert cache_key(base, "piper", "joe-medium-2") != key


async def test_a_stale_entry_means_synthesizing_again_not_a_failed_job(settings: Settings, cache: ResultCache) -> None:
    # Regression: one Redis shared by two stores (two `make run` data dirs), or audio expired before its
    # cache entry: the entry points at nothing. The job must be synthesized, and the entry dropped.
    codecs = Codecs()
    engine = CountingEngine()
    first_store = LocalAudioStore(settings.storage.local_dir / "first")
    synth = Synthesizer(engine, codecs, first_store, settings.storage, SynthesisSettings(), cache=cache)
    storer = Storer(first_store, settings.storage, public_base_url="http://api", cache=cache)
    first = await _process(synth, [codecs.request.encode(_request("job_stalefirst"))])
    await storer.complete(codecs.result.decode_event(codecs.result.encode_event(first[0])))

    other_store = LocalAudioStore(settings.storage.local_dir / "other")
    synth_elsewhere = Synthesizer(engine, codecs, other_store, settings.storage, SynthesisSettings(), cache=cache)
    again = await _process(synth_elsewhere, [codecs.request.encode(_request("job_staleagain"))])
    assert engine.calls == ["job_stalefirst", "job_staleagain"]
    assert again[0].status == "succeeded" and not again[0].cache_hit
    assert cache.hits == 0 and cache.misses == 2
    done = await Storer(other_store, settings.storage, public_base_url="http://api", cache=cache).complete(
        codecs.result.decode_event(codecs.result.encode_event(again[0])))
    assert done.status == "succeeded"
