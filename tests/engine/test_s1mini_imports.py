"""The engine stands alone: the GPU image has torch but not the API's libraries (pydantic, fastapi),
and the engine imports nothing of the worker (the import-linter contract checks the second statically;
this checks the first by running the imports with those libraries made unimportable)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_IMPORTS = """
import sys
for name in ("pydantic", "fastapi", "faust", "confluent_kafka", "aiokafka"):
    sys.modules[name] = None  # importing any of them now raises ImportError
import stream_workers.engine.s1mini.engine
import stream_workers.engine.slots
import stream_workers.engine.null_engine
loaded = sorted(m for m in sys.modules if m.startswith("stream_workers.") and not m.startswith("stream_workers.engine"))
assert not loaded, loaded
"""


def test_the_engine_imports_without_pydantic_fastapi_or_the_worker() -> None:
    done = subprocess.run([sys.executable, "-c", _IMPORTS], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr


def test_the_check_fails_when_a_blocked_library_is_imported() -> None:
    done = subprocess.run([sys.executable, "-c", _IMPORTS + "\nimport stream_workers.synthesis.synthesizer\n"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode != 0 and ("ImportError" in done.stderr or "ModuleNotFoundError" in done.stderr), done.stderr
