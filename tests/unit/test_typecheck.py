"""mypy finds no error in the packages and the standalone client (pyproject.toml [tool.mypy] files; `make typecheck`).

A subprocess, so `make test` (what CI runs) fails on a type error. mypy's incremental cache (.mypy_cache) makes
a second run about a second; a fresh clone pays the cold run once (about 45 s of CPU).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)  # a cold run took 163 s on 2 busy cores (44 s of CPU)
def test_mypy_finds_no_error() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stdout + done.stderr
