"""Models, voices and parameters through the API, against the real broker and Redis: routing to each
family's topic, voices resolved per engine, sampling parameters carried, ignored ones reported."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from confluent_kafka import Consumer

from schemas.codec import Codecs
from voicenote.kafka import client_config
from voicenote.models import ModelRegistry
from voicenote.settings import ModelSettings, Settings

pytestmark = pytest.mark.integration

SPEECH = {"input": "Your parcel is on its way.", "response_format": "wav"}
SAMPLING = {"temperature": 0.5, "top_p": 0.9, "repetition_penalty": 1.3, "seed": 42}
IGNORED = "X-Voicenote-Ignored-Params"


def _read(settings: Settings, topic: str, expect: int, timeout: float = 20) -> list[dict[str, Any]]:
    consumer = Consumer({**client_config(settings.kafka), "group.id": f"{settings.worker.group_id}-check-{topic}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 2000, "heartbeat.interval.ms": 500})
    consumer.subscribe([topic])
    codecs, found = Codecs(), []
    deadline = time.monotonic() + timeout
    # A little past ``expect``, so that a record sent to the wrong topic would show up too.
    while time.monotonic() < deadline and (len(found) < expect or time.monotonic() < deadline - timeout + 3):
        msg = consumer.poll(0.3)
        if msg is not None and msg.error() is None:
            found.append(codecs.request.decode(msg.value()))
    consumer.close()
    return found


async def test_each_model_goes_to_its_familys_topic_with_its_engines_voice(api_factory: Any, settings: Settings) -> None:
    registry = ModelRegistry.from_settings(settings)
    async with api_factory() as api:
        cpu = await api.post("/v1/audio/speech/async", json={**SPEECH, "model": "tts-1", "voice": "marin", "speed": 1.25})
        s1 = await api.post("/v1/audio/speech/async", json={**SPEECH, "model": "openaudio-s1-mini", "voice": "cedar", **SAMPLING})
        assert cpu.status_code == 202 and s1.status_code == 202, (cpu.text, s1.text)
        assert IGNORED not in cpu.headers and IGNORED not in s1.headers  # each engine uses all it was given
        cpu_job = (await api.get(f"/v1/jobs/{cpu.json()['job_id']}")).json()
        s1_job = (await api.get(f"/v1/jobs/{s1.json()['job_id']}")).json()
    assert cpu_job["model"] == "tts-1" and s1_job["model"] == "s1-mini" and "ignored_params" not in s1_job
    [cpu_event] = _read(settings, registry.get("tts-1").request_topic, 1)
    [s1_event] = _read(settings, registry.get("s1-mini").request_topic, 1)
    assert cpu_event["job_id"] == cpu.json()["job_id"] and s1_event["job_id"] == s1.json()["job_id"]
    assert (cpu_event["voice"], cpu_event["speed"], cpu_event["model"]) == ("en_US-joe-medium", 1.25, "tts-1")
    assert (s1_event["voice"], s1_event["model"]) == ("default", "s1-mini")
    assert {k: s1_event[k] for k in SAMPLING} == SAMPLING
    assert s1_event["attributes"]["voice_requested"] == "cedar"
    assert s1_event["attributes"]["model_requested"] == "openaudio-s1-mini"


async def test_parameters_the_engine_ignores_are_named_in_the_header_and_the_job(api_factory: Any, settings: Settings) -> None:
    async with api_factory() as api:
        piper = await api.post("/v1/audio/speech/async", json={**SPEECH, "model": "tts-1", "voice": "alloy", **SAMPLING,
                                                                "instructions": "Whisper."})
        s1 = await api.post("/v1/audio/speech/async", json={**SPEECH, "model": "s1-mini", "speed": 2.0, "seed": 1})
        batch = await api.post("/v1/audio/speech/batch", json={"requests": [
            {"text": "One.", "model": "tts-1", "seed": 5}, {"text": "Two.", "model": "s1-mini", "seed": 5}]})
        assert piper.status_code == s1.status_code == batch.status_code == 202
        piper_job = (await api.get(f"/v1/jobs/{piper.json()['job_id']}")).json()
        s1_job = (await api.get(f"/v1/jobs/{s1.json()['job_id']}")).json()
    expected = ["instructions", "temperature", "top_p", "repetition_penalty", "seed"]
    assert piper.headers[IGNORED] == ", ".join(expected)
    assert piper.json()["ignored_params"] == expected and piper_job["ignored_params"] == expected
    assert s1.headers[IGNORED] == "speed" and s1_job["ignored_params"] == ["speed"]
    one, two = batch.json()["job_ids"]
    assert batch.json()["ignored_params"] == {one: ["seed"]} and batch.headers[IGNORED] == "seed"
    [event] = [e for e in _read(settings, ModelRegistry.from_settings(settings).get("tts-1").request_topic, 2)
               if e["job_id"] == piper.json()["job_id"]]
    assert event["attributes"]["ignored_params"] == ",".join(expected)  # so a rebuilt projection keeps it


async def test_unknown_fields_on_the_openai_endpoint_are_named_as_ignored_not_refused(api_factory: Any,
                                                                                      settings: Settings) -> None:
    """What the OpenAI SDK's extra_body carries (here fields of other servers: Kokoro's lang_code, fish-speech's
    chunk_length, a nested object) is accepted on POST /v1/audio/speech and named with what the engine ignores.
    No worker runs: the 504 names the job, whose record says what was ignored."""
    extra = {"lang_code": "a", "chunk_length": 200, "normalization_options": {"normalize": True}, "weird name,": 1}
    async with api_factory(sync_timeout_seconds=1.0) as api:
        resp = await api.post("/v1/audio/speech", json={**SPEECH, "seed": 3, **extra})
        assert resp.status_code == 504, resp.text
        job = (await api.get(f"/v1/jobs/{resp.headers['x-job-id']}")).json()
        # The native endpoints still refuse what they do not know.
        native = await api.post("/v1/audio/speech/async", json={**SPEECH, "lang_code": "a"})
    named = ["seed", "chunk_length", "lang_code", "normalization_options", "weird%20name%2C"]
    assert job["ignored_params"] == named and resp.headers[IGNORED] == ", ".join(named)
    assert native.status_code == 400 and native.json()["error"]["param"] == "lang_code"


@pytest.mark.parametrize(("patch", "param", "hint"), [
    ({"responseFormat": "wav"}, "responseFormat", "response_format"),  # another spelling of ours
    ({"webook_url": "https://example.com/hook"}, "webook_url", "webhook_url"),  # misspelt: the callback would be lost
    ({"Speed": 1.5}, "Speed", "speed"),
    ({"voice_id": "nova"}, "voice_id", "voice"),  # the batch endpoint's name, without OpenAI's voice
    ({"format": "wav"}, "format", "response_format"),
])
async def test_unknown_fields_that_look_like_ours_are_refused(api_factory: Any, patch: dict[str, Any], param: str,
                                                              hint: str) -> None:
    async with api_factory() as api:
        resp = await api.post("/v1/audio/speech", json={"input": "Your parcel is on its way.", **patch})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_request" and repr(hint) in error["message"]


@pytest.mark.parametrize(("body", "param", "listed"), [
    ({"model": "s1-mini", "voice": "en_US-joe-medium"}, "voice", ["default", "alloy", "cedar"]),
    ({"model": "tts-1", "voice": "bob"}, "voice", ["en_US-joe-medium", "marin", "verse"]),
    ({"model": "tts-2"}, "model", ["tts-1", "s1-mini", "openaudio-s1-mini"]),
])
async def test_unknown_voice_or_model_gets_a_400_listing_the_valid_ones(api_factory: Any, settings: Settings,
                                                                       body: dict[str, str], param: str, listed: list[str]) -> None:
    async with api_factory() as api:
        resp = await api.post("/v1/audio/speech/async", json={**SPEECH, **body})
        in_batch = await api.post("/v1/audio/speech/batch", json={"requests": [{"text": "Fine."}, {"text": "Not.", **body}]})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and all(name in error["message"] for name in listed)
    assert in_batch.status_code == 400 and in_batch.json()["error"]["param"] == f"requests.1.{param}"
    registry = ModelRegistry.from_settings(settings)
    assert _read(settings, registry.get("tts-1").request_topic, 0, timeout=3) == []  # the batch published nothing


@pytest.mark.parametrize("patch", [{"temperature": 2.1}, {"top_p": 0}, {"repetition_penalty": -1}, {"seed": -3},
                                   {"seed": "abc"}, {"temperature": "hot"}])
async def test_out_of_range_sampling_parameters_get_a_400(api_factory: Any, patch: dict[str, Any]) -> None:
    async with api_factory() as api:
        resp = await api.post("/v1/audio/speech/async", json={**SPEECH, "model": "s1-mini", **patch})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == next(iter(patch))


async def test_models_and_voices_are_listed(api_factory: Any) -> None:
    async with api_factory() as api:
        models = (await api.get("/v1/models")).json()
        one = await api.get("/v1/models/OpenAudio-S1-mini")
        missing = await api.get("/v1/models/tts-2")
        voices = (await api.get("/v1/audio/voices")).json()
        s1_voices = (await api.get("/v1/audio/voices", params={"model": "s1-mini"})).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "s1-mini"]
    assert all(m["object"] == "model" and m["owned_by"] == "voicenote" for m in models["data"])
    assert one.status_code == 200 and one.json()["id"] == "s1-mini" and one.json()["sample_rate"] == 44100
    assert one.json()["parameters"] == ["repetition_penalty", "seed", "temperature", "top_p"]
    assert set(one.json()["ignored_parameters"]) == {"speed", "instructions"}
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    by_model = {entry["model"]: entry for entry in voices["data"]}
    assert by_model["tts-1"]["voices"][0]["id"] == "en_US-joe-medium"
    assert by_model["tts-1"]["voice_names"]["cedar"] == "en_US-joe-medium"
    assert [v["id"] for v in by_model["s1-mini"]["voices"]] == ["default"]
    assert by_model["s1-mini"]["voice_names"]["alloy"] == "default"
    assert [entry["model"] for entry in s1_voices["data"]] == ["s1-mini"]
    # Flat, as Kokoro-FastAPI answers: every accepted name once, each model's in data's order.
    assert voices["voices"][:2] == ["en_US-joe-medium", "alloy"] and len(set(voices["voices"])) == len(voices["voices"])
    assert set(voices["voices"]) == {name for entry in voices["data"] for name in entry["voice_names"]}
    assert s1_voices["voices"][0] == "default" and "en_US-joe-medium" not in s1_voices["voices"]


async def test_a_family_this_deployment_does_not_serve_is_refused(api_factory: Any, settings: Settings) -> None:
    settings.models = ModelSettings(families=["piper"])
    async with api_factory() as api:
        resp = await api.post("/v1/audio/speech/async", json={**SPEECH, "model": "s1-mini"})
        models = (await api.get("/v1/models")).json()
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "model_not_found"
    assert "s1-mini" not in [m["id"] for m in models["data"]]


async def test_projection_rebuild_reads_every_familys_request_topic(settings: Settings) -> None:
    from ops.rebuild import rebuild
    from schemas.topics import build_catalog
    from voicenote.jobstore import JobStore
    from voicenote.kafka import AsyncProducer, ensure_topics

    catalog = build_catalog(prefix=settings.kafka.topic_prefix, request_partitions=settings.kafka.request_partitions,
                            partitions=settings.kafka.partitions)
    ensure_topics(settings.kafka, catalog.all())
    codecs, producer = Codecs(), AsyncProducer(settings.kafka)
    now = int(time.time() * 1000)
    base = {"created_at": now, "text": "hello", "format": "wav", "speed": 1.0, "priority": "batch"}
    try:
        await producer.send(catalog.requests.name, codecs.request.encode(
            {**base, "job_id": "job_cpu", "voice": "en_US-joe-medium", "model": "tts-1"}), key=b"job_cpu")
        await producer.send(catalog.requests_for("s1mini").name, codecs.request.encode(
            {**base, "job_id": "job_s1", "voice": "default", "model": "s1-mini", "attributes": {"ignored_params": "speed"}}),
            key=b"job_s1")
    finally:
        producer.close()
    jobs = JobStore.from_settings(settings.redis)
    try:
        report = await rebuild(settings, jobs)
        cpu, s1 = await jobs.get("job_cpu"), await jobs.get("job_s1")
    finally:
        await jobs.close()
    assert report.requests == 2
    assert cpu is not None and (cpu["status"], cpu["model"]) == ("queued", "tts-1") and "ignored_params" not in cpu
    assert s1 is not None and (s1["status"], s1["model"], s1["ignored_params"]) == ("queued", "s1-mini", "speed")


async def test_estimated_seconds_come_from_the_models_own_family(api_factory: Any) -> None:
    # No workers run: S1-mini's lag grows with each submission, the CPU family's stays empty.
    async with api_factory(estimate_refresh_seconds=0.2, estimate_prior_jobs_per_second=1.0) as api:
        s1_estimate, deadline = 0.0, time.monotonic() + 30
        while s1_estimate < 3 and time.monotonic() < deadline:
            resp = await api.post("/v1/audio/speech/async", json={**SPEECH, "model": "s1-mini"})
            s1_estimate = resp.json()["estimated_seconds"]
            await asyncio.sleep(0.3)
        cpu = await api.post("/v1/audio/speech/async", json={**SPEECH, "model": "tts-1"})
    assert s1_estimate >= 3, "S1-mini's lag never reached its estimate"
    assert cpu.json()["estimated_seconds"] == 1.0  # (no lag + this job) / the prior rate


async def test_voices_show_what_the_running_engines_advertise(api_factory: Any, settings: Settings) -> None:
    import redis.asyncio as aioredis

    from voicenote.adverts import ADVERT_TTL_SECONDS, advert_key, publish_advert

    client = aioredis.Redis.from_url(settings.redis.url, decode_responses=True)
    try:
        async with api_factory() as api:
            before = {e["model"]: e["running"] for e in (await api.get("/v1/audio/voices")).json()["data"]}
            await publish_advert(client, settings.redis.key_prefix, "s1mini", engine="s1mini", model_version="openaudio-s1-mini-x",
                                 sample_rate=44100, voices=["default", "narrator"])
            after = {e["model"]: e["running"] for e in (await api.get("/v1/audio/voices")).json()["data"]}
        ttl = await client.ttl(advert_key(settings.redis.key_prefix, "s1mini"))
    finally:
        await client.aclose()
    assert before == {"tts-1": None, "tts-1-hd": None, "gpt-4o-mini-tts": None, "s1-mini": None}
    assert after["tts-1"] is None
    assert after["s1-mini"]["voices"] == ["default", "narrator"] and after["s1-mini"]["model_version"] == "openaudio-s1-mini-x"
    assert after["s1-mini"]["seen_at"] > 0 and 0 < ttl <= ADVERT_TTL_SECONDS
