"""Where each model's requests go, and the voice names a stock deployment accepts for them.

The server's registry is ``voicenote/models.py``; tests/unit/test_client_package.py checks that this
table agrees with it. A voice id not listed here (an S1-mini voice registered on your deployment) is
published unchanged: the workers refuse an unknown one with a ``failed`` completion.
"""

from __future__ import annotations

from dataclasses import dataclass

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar")
PIPER_VOICE = "en_US-joe-medium"
S1MINI_DEFAULT_VOICE = "default"


@dataclass(frozen=True)
class ModelRoute:
    id: str
    family: str  # which request topic: voicenote.requests.v1 (piper) or voicenote.requests.<family>.v1
    default_voice: str
    voice_aliases: dict[str, str]  # lower-case name -> voice id

    def topic(self, prefix: str = "") -> str:
        return f"{prefix}voicenote.requests.v1" if self.family == "piper" else f"{prefix}voicenote.requests.{self.family}.v1"

    def resolve_voice(self, name: str) -> str:
        if name == "default":
            return self.default_voice
        return self.voice_aliases.get(name.lower(), name)


_PIPER_ALIASES = {"default": PIPER_VOICE, **{name: PIPER_VOICE for name in OPENAI_VOICES}}
_S1MINI_ALIASES = {name: S1MINI_DEFAULT_VOICE for name in OPENAI_VOICES}

MODELS: dict[str, ModelRoute] = {
    **{name: ModelRoute(name, "piper", PIPER_VOICE, _PIPER_ALIASES) for name in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")},
    **{name: ModelRoute("s1-mini", "s1mini", S1MINI_DEFAULT_VOICE, _S1MINI_ALIASES)
       for name in ("s1-mini", "openaudio-s1-mini", "fish-speech-s1-mini")},
}


def route(model: str) -> ModelRoute:
    try:
        return MODELS[model.lower()]
    except KeyError:
        raise ValueError(f"unknown model {model!r}; valid models: {', '.join(MODELS)}") from None
