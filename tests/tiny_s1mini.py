"""A tiny random S1-mini checkpoint on disk, and the ``voicenote`` command run against it on the CPU.

The checkpoint directory's format (config.json, model.pth, codec.pth, tokenizer files) carries the
model's shapes but not the codec's: the engine assumes the real codec (184 M parameters). Run as
``python -m tests.tiny_s1mini voicenote-args...``, it first makes the engine assume the
tiny codec the checkpoint was written with, then runs the command unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

N_SEMANTIC = 64


def write_tiny_checkpoint(path: Path) -> Path:
    from stream_workers.engine.s1mini import S1MiniEngine, S1MiniSettings, tiny_codec_config, tiny_config
    from stream_workers.engine.s1mini.tokenizer import ByteTokenizer
    from tests.engine.test_s1mini_checkpoint import write_checkpoint

    tok = ByteTokenizer(num_semantic=N_SEMANTIC)
    engine = S1MiniEngine(S1MiniSettings(random_init=True, seed=7, model_config=tiny_config(tok.vocab_size, N_SEMANTIC),
                                         codec_config=tiny_codec_config(N_SEMANTIC), max_new_tokens=8,
                                         on_max_tokens="truncate"), tokenizer=tok)
    write_checkpoint(path, engine, tok)
    return path


def main() -> int:
    import stream_workers.engine.s1mini.engine as engine_module
    from ops.cli import main as voicenote
    from stream_workers.engine.s1mini import tiny_codec_config

    engine_module.s1mini_codec_config = lambda: tiny_codec_config(N_SEMANTIC)  # type: ignore[attr-defined]
    return voicenote(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
