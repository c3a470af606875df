"""The model registry: models to topics and groups, voices per engine, and the parameters each engine ignores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas.topics import build_catalog
from schemas.validation import request_problems
from voicenote.errors import ConfigError
from voicenote.models import (
    TUNABLE_PARAMS,
    ModelRegistry,
    UnknownModel,
    UnknownVoiceName,
    family_of,
    registered_s1mini_voices,
    synthesis_group,
)
from voicenote.settings import EngineKind, EngineSettings, KafkaSettings, ModelSettings, Settings
from voicenote.voices import OPENAI_VOICES

OPENAI_NOW = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar")


def _registry(**models: object) -> ModelRegistry:
    return ModelRegistry.from_settings(Settings(models=ModelSettings(**models)))  # type: ignore[arg-type]


def test_each_model_family_has_its_own_request_topic_and_synthesis_group() -> None:
    registry = _registry()
    cpu = {registry.get(name).request_topic for name in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")}
    assert cpu == {"voicenote.requests.v1"}  # unchanged, so direct publishers of before still reach the CPU engine
    assert registry.get("s1-mini").request_topic == "voicenote.requests.s1mini.v1"
    assert registry.get("tts-1").consumer_group == "voicenote-synthesis"
    assert registry.get("s1-mini").consumer_group == "voicenote-synthesis-s1mini"
    catalog = build_catalog()
    assert [spec.name for spec in catalog.request_topics()] == ["voicenote.requests.v1", "voicenote.requests.s1mini.v1"]
    assert {s.name for s in catalog.request_topics()} <= {s.name for s in catalog.all()}  # provisioning creates every one
    assert catalog.requests_for("s1mini").partitions == 24
    with pytest.raises(KeyError, match="s1mini"):
        catalog.requests_for("kokoro")


def test_topic_prefix_and_group_id_carry_into_the_registry() -> None:
    settings = Settings(kafka=KafkaSettings(topic_prefix="t9."), worker={"group_id": "g9"})  # type: ignore[arg-type]
    s1 = ModelRegistry.from_settings(settings).get("s1-mini")
    assert (s1.request_topic, s1.consumer_group) == ("t9.voicenote.requests.s1mini.v1", "g9-synthesis-s1mini")


def test_workers_consume_the_family_of_the_engine_they_run() -> None:
    assert family_of(EngineKind.piper) == "piper"
    assert family_of(EngineKind.null) == "piper"  # the zero-cost engine stands in for the CPU one
    assert family_of(EngineKind.s1mini) == "s1mini"
    assert synthesis_group("voicenote", family_of(EngineKind.s1mini)) == "voicenote-synthesis-s1mini"


def test_models_resolve_by_id_or_alias_case_insensitively_and_unknown_lists_the_valid_ones() -> None:
    registry = _registry()
    assert registry.get("OpenAudio-S1-mini").id == "s1-mini"
    assert registry.get("TTS-1-HD").id == "tts-1-hd"
    with pytest.raises(UnknownModel) as unknown:
        registry.get("tts-2")
    assert all(name in str(unknown.value) for name in ("tts-1", "s1-mini", "openaudio-s1-mini"))


def test_a_deployment_may_serve_only_some_families() -> None:
    registry = _registry(families=["piper"])
    with pytest.raises(UnknownModel):
        registry.get("s1-mini")
    with pytest.raises(ValueError, match="families"):
        ModelSettings(families=["kokoro"])


def test_every_current_openai_voice_is_accepted_by_every_model() -> None:
    assert OPENAI_VOICES == OPENAI_NOW
    registry = _registry()
    for model in registry.models:
        for name in OPENAI_NOW:
            assert model.resolve_voice(name).id == model.default_voice
            assert model.resolve_voice(name.upper()).id == model.default_voice
    assert registry.get("tts-1").default_voice == "en_US-joe-medium"
    assert registry.get("s1-mini").default_voice == "default"


def test_a_built_in_s1mini_voice_may_not_take_a_registered_voice_name() -> None:
    # vc_ ids are the API's registered voices (docs/voices.md); a built-in one of that shape would never be reached.
    with pytest.raises(ConfigError, match="vc_"):
        _registry(s1mini_voices=["narrator", "vc_0123456789abcdef01234567"])


def test_voices_resolve_for_the_engine_that_serves_them() -> None:
    registry = _registry(s1mini_voices=["narrator", "nova"])
    piper, s1 = registry.get("tts-1"), registry.get("s1-mini")
    assert s1.resolve_voice("narrator").id == "narrator"
    assert s1.resolve_voice("nova").id == "nova"  # a registered voice of an OpenAI name wins over the default
    assert s1.resolve_voice("alloy").id == "default"
    with pytest.raises(UnknownVoiceName) as piper_unknown:
        piper.resolve_voice("narrator")  # an S1-mini voice is not a Piper voice
    assert "en_US-joe-medium" in str(piper_unknown.value) and "alloy" in str(piper_unknown.value)
    with pytest.raises(UnknownVoiceName) as s1_unknown:
        s1.resolve_voice("en_US-joe-medium")
    assert all(name in str(s1_unknown.value) for name in ("default", "narrator", "cedar"))


def test_s1mini_voices_are_read_from_the_registered_voices_directory(tmp_path: Path) -> None:
    for name, complete in (("ada", True), ("half", False), (".hidden", True)):
        d = tmp_path / name
        d.mkdir()
        (d / "prompt.txt").write_text("Hello.")
        if complete:
            np.save(d / "codes.npy", np.zeros((10, 4), dtype=np.int64))
    assert registered_s1mini_voices(tmp_path) == ["ada"]
    assert registered_s1mini_voices(tmp_path / "missing") == []
    settings = Settings(engine=EngineSettings(s1mini_voices_dir=tmp_path))
    assert [v.id for v in ModelRegistry.from_settings(settings).get("s1-mini").voices] == ["default", "ada"]


def test_parameters_the_engine_does_not_use_are_named() -> None:
    registry = _registry()
    piper, s1 = registry.get("tts-1"), registry.get("s1-mini")
    everything = {"speed": 1.5, "instructions": "Cheerful.", "temperature": 0.5, "top_p": 0.9, "repetition_penalty": 1.2, "seed": 3}
    assert piper.ignored(everything) == ["instructions", "temperature", "top_p", "repetition_penalty", "seed"]
    assert s1.ignored(everything) == ["speed", "instructions"]
    defaults = {"speed": 1.0, "instructions": None, "temperature": None, "top_p": None, "repetition_penalty": None, "seed": None}
    assert piper.ignored(defaults) == [] and s1.ignored(defaults) == []
    assert piper.ignored({"seed": 0, "temperature": 0.0}) == ["temperature", "seed"]  # zero is set, not absent
    for model in registry.models:  # every ignored parameter has a reason to show in /v1/models
        assert set(model.ignored_notes) == set(TUNABLE_PARAMS) - model.honours


@pytest.mark.parametrize(("change", "fragment"), [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"seed": -1}, "seed"),
])
def test_direct_publishers_sampling_parameters_are_checked_by_the_workers(change: dict[str, float], fragment: str) -> None:
    record = {"job_id": "job_1", "text": "hi", "format": "wav", "speed": 1.0, "priority": "batch"}
    assert request_problems(record) == []
    assert request_problems({**record, "temperature": 0.0, "top_p": 1.0, "repetition_penalty": 2.0, "seed": 0}) == []
    assert any(fragment in p for p in request_problems({**record, **change}))
