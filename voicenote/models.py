"""The model registry: every model we serve, the engine behind it, where its requests go, the voices it
accepts and the parameters it honours.

Built from settings (``ModelRegistry.from_settings``) by the API, which routes ``model`` to a request
topic and resolves ``voice`` for that model's engine, and by the workers, which consume the topic of
the engine they run. Models of one engine share a *family*: one request topic and one synthesis
consumer group, so each engine's deployment scales on its own lag.

| model | aliases | family | request topic | synthesis group |
| --- | --- | --- | --- | --- |
| tts-1, tts-1-hd, gpt-4o-mini-tts | | piper (CPU) | voicenote.requests.v1 | voicenote-synthesis |
| s1-mini | openaudio-s1-mini, fish-speech-s1-mini | s1mini (GPU) | voicenote.requests.s1mini.v1 | voicenote-synthesis-s1mini |
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.topics import CPU_FAMILY, TopicCatalog
from voicenote import voices as piper_voices
from voicenote.errors import ConfigError, InvalidInput
from voicenote.registered_voices import is_voice_id
from voicenote.settings import EngineKind, Settings

SAMPLING_PARAMS = ("temperature", "top_p", "repetition_penalty", "seed")
TUNABLE_PARAMS = ("speed", "instructions", *SAMPLING_PARAMS)
S1MINI_DEFAULT_VOICE = "default"
S1MINI_SAMPLE_RATE = 44100
_S1MINI_VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # as stream_workers/engine/s1mini/voices.py


class UnknownModel(InvalidInput):
    pass


class UnknownVoiceName(InvalidInput):
    pass


@dataclass(frozen=True)
class Voice:
    id: str  # what the engine is asked for (the request event's ``voice``)
    description: str


@dataclass(frozen=True)
class Model:
    id: str
    aliases: tuple[str, ...]
    family: str
    engine: EngineKind
    description: str
    sample_rate: int
    request_topic: str
    consumer_group: str
    voices: tuple[Voice, ...]  # what the engine serves
    voice_aliases: Mapping[str, str]  # accepted lower-case name -> voice id
    honours: frozenset[str]  # of TUNABLE_PARAMS
    ignored_notes: Mapping[str, str] = field(default_factory=dict)  # why a parameter is ignored, for the docs and /v1/models
    word_timestamps: bool = False  # its engine times words (``timestamps: "word"``); the others are refused it

    @property
    def default_voice(self) -> str:
        return self.voices[0].id

    def voice_names(self) -> list[str]:
        """Every name ``voice`` may take for this model: the engine's voice ids, then the aliases."""
        ids = [v.id for v in self.voices]
        return ids + sorted(n for n in self.voice_aliases if n not in ids)

    def resolve_voice(self, name: str) -> Voice:
        """The engine voice behind ``name`` (a voice id, exactly, or an alias, case-insensitively)."""
        by_id = {v.id: v for v in self.voices}
        if name in by_id:
            return by_id[name]
        target = self.voice_aliases.get(name.lower())
        if target is None:
            raise UnknownVoiceName(f"unknown voice {name!r} for model {self.id!r}; valid voices: {', '.join(self.voice_names())}")
        return by_id[target]

    def ignored(self, params: Mapping[str, Any]) -> list[str]:
        """The parameters ``params`` sets (not None, speed not 1.0) that this model's engine does not use."""
        given = [name for name in TUNABLE_PARAMS if params.get(name) is not None and not (name == "speed" and params[name] == 1.0)]
        return [name for name in given if name not in self.honours]


@dataclass(frozen=True)
class ModelRegistry:
    models: tuple[Model, ...]

    def get(self, name: str) -> Model:
        """The model ``name`` (an id or an alias, case-insensitive)."""
        wanted = name.lower()
        for model in self.models:
            if wanted == model.id or wanted in model.aliases:
                return model
        raise UnknownModel(f"unknown model {name!r}; valid models: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [n for m in self.models for n in (m.id, *m.aliases)]

    def family(self, family: str) -> list[Model]:
        return [m for m in self.models if m.family == family]

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        catalog = settings.kafka.catalog()
        group = settings.worker.group_id
        models = []
        for family in settings.models.families:
            models += _FAMILIES[family](settings, catalog, group)
        return cls(tuple(models))


def family_of(engine: EngineKind) -> str:
    """The model family whose requests a worker running ``engine`` consumes.

    The null engine (benchmarks, fault tests) stands in for the CPU engine, so it reads the CPU topic.
    """
    return "s1mini" if engine is EngineKind.s1mini else CPU_FAMILY


def synthesis_group(group_id: str, family: str) -> str:
    """The synthesis consumer group of a family: ``voicenote-synthesis`` for the CPU one (unchanged)."""
    return f"{group_id}-synthesis" if family == CPU_FAMILY else f"{group_id}-synthesis-{family}"


def registered_s1mini_voices(voices_dir: Path | None) -> list[str]:
    """Reference voices registered in ``voices_dir`` (the layout of stream_workers/engine/s1mini/voices.py)."""
    if voices_dir is None or not voices_dir.is_dir():
        return []
    return sorted(p.name for p in voices_dir.iterdir()
                  if p.is_dir() and _S1MINI_VOICE_NAME.match(p.name) and (p / "prompt.txt").exists() and (p / "codes.npy").exists())


def _piper_models(settings: Settings, catalog: TopicCatalog, group: str) -> list[Model]:
    topic = catalog.requests_for(CPU_FAMILY).name
    installed = tuple(Voice(v.id, v.description) for v in piper_voices.INSTALLED.values())
    notes = {name: "Piper has no sampling" for name in SAMPLING_PARAMS}
    notes["instructions"] = "Piper cannot be steered by text"
    common: dict[str, Any] = dict(
        aliases=(), family=CPU_FAMILY, engine=EngineKind.piper, sample_rate=next(iter(piper_voices.INSTALLED.values())).sample_rate,
        request_topic=topic, consumer_group=synthesis_group(group, CPU_FAMILY), voices=installed,
        voice_aliases=dict(piper_voices.ALIASES), honours=frozenset({"speed"}), ignored_notes=notes,
        word_timestamps=True)
    return [
        Model(id="tts-1", description="Piper en_US-joe-medium on the CPU (OpenAI's name).", **common),
        Model(id="tts-1-hd", description="The same Piper voice as tts-1: there is no higher-quality CPU voice installed.", **common),
        Model(id="gpt-4o-mini-tts", description="The same Piper voice as tts-1; instructions are not used.", **common),
    ]


def _s1mini_models(settings: Settings, catalog: TopicCatalog, group: str) -> list[Model]:
    registered = sorted({*settings.models.s1mini_voices, *registered_s1mini_voices(settings.engine.s1mini_voices_dir)}
                        - {S1MINI_DEFAULT_VOICE})
    if clash := [name for name in registered if is_voice_id(name)]:
        # vc_ names the voices registered through the API (docs/voices.md): a built-in one would never be reached.
        raise ConfigError(f"S1-mini voice names must not start with 'vc_' (registered voices' ids do): {', '.join(clash)}")
    voices = (Voice(S1MINI_DEFAULT_VOICE, "S1-mini without a reference: the model's own voice, which varies with the seed"),
              *(Voice(name, "S1-mini with a registered reference voice") for name in registered))
    # OpenAI's names reach a registered voice of the same name when there is one, else the default, so an
    # OpenAI client that must send a voice works unchanged.
    aliases = {name: name if name in registered else S1MINI_DEFAULT_VOICE for name in piper_voices.OPENAI_VOICES}
    return [Model(
        id="s1-mini", aliases=("openaudio-s1-mini", "fish-speech-s1-mini"), family="s1mini", engine=EngineKind.s1mini,
        description="OpenAudio S1-mini (dual autoregressive transformer and 44.1 kHz codec) on the GPU workers.",
        sample_rate=S1MINI_SAMPLE_RATE, request_topic=catalog.requests_for("s1mini").name,
        consumer_group=synthesis_group(group, "s1mini"), voices=voices, voice_aliases=aliases,
        honours=frozenset(SAMPLING_PARAMS),
        ignored_notes={"speed": "S1-mini sets its own pace; there is no duration control in the engine",
                       "instructions": "S1-mini takes emotion and tone as markers inside the text, e.g. '(excited) Hello!'"},
    )]


_FAMILIES = {CPU_FAMILY: _piper_models, "s1mini": _s1mini_models}
