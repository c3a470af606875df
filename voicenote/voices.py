"""The CPU (Piper) voice catalog: which Piper voices are installed and which names reach them.

The API reads it (through the model registry, voicenote/models.py) to validate and map ``voice``
without loading any engine; the request event carries the installed voice id. Piper's
``en_US-joe-medium`` is the one installed voice today and it has a single speaker, so every OpenAI
name maps to it unchanged: the names are accepted for compatibility, they do not sound different. A
new voice is one entry in ``INSTALLED`` and a change of aliases.
"""

from __future__ import annotations

from dataclasses import dataclass

from voicenote.errors import InvalidInput


@dataclass(frozen=True)
class Voice:
    id: str  # what the engine is asked for
    sample_rate: int  # of the engine's output, and so of the pcm format
    description: str


INSTALLED: dict[str, Voice] = {
    "en_US-joe-medium": Voice("en_US-joe-medium", 22050, "Piper, US English, male, medium quality"),
}

# OpenAI's current speech voices (marin and cedar came with gpt-4o-mini-tts).
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar")

ALIASES: dict[str, str] = {"default": "en_US-joe-medium", **{name: "en_US-joe-medium" for name in OPENAI_VOICES}}


class UnknownVoiceName(InvalidInput):
    pass


def valid_names() -> list[str]:
    return sorted({*INSTALLED, *ALIASES})


def resolve(name: str) -> Voice:
    """The installed voice behind ``name`` (an installed id or an alias, case-insensitive for aliases)."""
    if name in INSTALLED:
        return INSTALLED[name]
    target = ALIASES.get(name.lower())
    if target is None:
        raise UnknownVoiceName(f"unknown voice {name!r}; valid voices: {', '.join(valid_names())}")
    return INSTALLED[target]
