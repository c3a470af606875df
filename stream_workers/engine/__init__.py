"""Speech engines, below the worker: this package imports nothing else of stream_workers.

base.py has the interfaces: batch engines (Piper, null) are ``SpeechEngine``s, and the synthesis loop
drives every engine as a ``ContinuousEngine`` (S1-mini natively, a batch engine through
``slots.continuous``). batches.py keeps a batch engine's failures small (split-and-retry).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
            on_max_tokens=settings.s1mini_on_max_tokens,
            codec_config=_codec_config(settings.s1mini_checkpoint_dir),
            compile=settings.s1mini_compile,
            compile_cache_dir=str(settings.s1mini_compile_cache_dir) if settings.s1mini_compile_cache_dir else None,
            codec_process=settings.s1mini_codec_process,
            slots=settings.s1mini_slots,
            kv_capacity=settings.s1mini_kv_capacity,
            prefill_tokens=settings.s1mini_prefill_tokens,
            cuda_graphs=settings.s1mini_cuda_graphs,
            codec_dtype=settings.s1mini_codec_dtype,
            codec_compile=settings.s1mini_codec_compile,
            voices_dir=str(settings.s1mini_voices_dir) if settings.s1mini_voices_dir else None,
            voice_cache_size=settings.s1mini_voice_cache_size,
            voice_ttl_s=settings.s1mini_voice_ttl_seconds,
        )
    )


def _codec_config(checkpoint_dir: Path) -> Any:
    """The codec's shapes from an optional ``codec_config.json`` beside ``codec.pth``; None: the published codec.

    The published checkpoint ships no codec config (its shapes are fixed), so the file only exists for
    other shapes, such as the tiny random checkpoint the end-to-end test writes.
    """
    from stream_workers.engine.s1mini import CheckpointError, CodecConfig

    path = checkpoint_dir / "codec_config.json"
    if not path.exists():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(CodecConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{path}: unknown codec settings {', '.join(unknown)}")
        shapes: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        config = CodecConfig(**shapes)
        _ = config.hop_length  # a wrongly typed rate list fails here, at start-up, not in the first batch
        return config
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a readable codec config: {exc}") from exc
