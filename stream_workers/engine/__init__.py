"""Speech engines behind one interface (see base.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stream_workers.engine.base import SpeechEngine

if TYPE_CHECKING:  # engine.s1mini must import without pydantic (the GPU image has only torch)
    from voicenote.settings import EngineSettings


def build_engine(settings: EngineSettings) -> SpeechEngine:
    """The engine the settings name, loaded and ready."""
    from voicenote.settings import EngineKind

    if settings.kind is EngineKind.piper:
        from stream_workers.engine.piper_engine import PiperBatchedEngine, PiperEngine

        if settings.piper_batched:
            return PiperBatchedEngine.joe(threads=settings.threads)
        return PiperEngine.joe(threads=settings.threads)
    if settings.kind is EngineKind.null:
        from stream_workers.engine.null_engine import NullEngine

        return NullEngine(batch_seconds=settings.null_batch_seconds, fail_marker=settings.null_fail_marker)
    from stream_workers.engine.s1mini import S1MiniEngine, S1MiniSettings

    if settings.s1mini_checkpoint_dir is None:
        from stream_workers.engine.s1mini import CheckpointError

        raise CheckpointError("engine.kind=s1mini needs VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR (a local openaudio-s1-mini directory)")
    return S1MiniEngine(
        S1MiniSettings(
            checkpoint_dir=str(settings.s1mini_checkpoint_dir),
            device=settings.s1mini_device,
            dtype=settings.s1mini_dtype,
            max_new_tokens=settings.s1mini_max_new_tokens,
            compile=settings.s1mini_compile,
            voices_dir=str(settings.s1mini_voices_dir) if settings.s1mini_voices_dir else None,
        )
    )
