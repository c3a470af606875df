"""Speech engines behind one interface (see base.py)."""

from __future__ import annotations

from stream_workers.engine.base import SpeechEngine
from voicenote.settings import EngineKind, EngineSettings


def build_engine(settings: EngineSettings) -> SpeechEngine:
    """The engine the settings name, loaded and ready."""
    if settings.kind is EngineKind.piper:
        from stream_workers.engine.piper_engine import PiperBatchedEngine, PiperEngine

        if settings.piper_batched:
            return PiperBatchedEngine.joe(threads=settings.threads)
        return PiperEngine.joe(threads=settings.threads)
    if settings.kind is EngineKind.null:
        from stream_workers.engine.null_engine import NullEngine

        return NullEngine(batch_seconds=settings.null_batch_seconds, fail_marker=settings.null_fail_marker)
    from stream_workers.engine.s1mini import build_s1mini_engine  # type: ignore[attr-defined]

    return build_s1mini_engine(settings)  # type: ignore[no-any-return]
