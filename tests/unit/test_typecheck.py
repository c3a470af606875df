"""mypy finds no error in the packages and the standalone client (pyproject.toml [tool.mypy] files; `make typecheck`).

A subprocess, so `make test` (what CI runs) fails on a type error. mypy's incremental cache (.mypy_cache) makes
a second run about a second; a fresh clone pays the cold run once (about 45 s of CPU). In a serial run it starts in
the background as soon as collection is done (tests/conftest.py), so it overlaps the end-to-end tests, which mostly
wait on their processes, and this test only collects its result. Under pytest-xdist (`make test`), it runs when its
worker gets to it, beside the other workers' files (docs/testing.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parents[2]


class _Mypy:
    """mypy as a background process (niced: the tests' own processes come first), its output in a temporary file."""

    def __init__(self) -> None:
        self.out: IO[str] = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")], cwd=ROOT,
                                     stdout=self.out, stderr=subprocess.STDOUT, text=True, preexec_fn=lambda: os.nice(10))

    def result(self, timeout: float) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        self.out.seek(0)
        return code, self.out.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


_early: _Mypy | None = None


def start_early() -> None:
    """Start mypy as soon as the run knows it will hold this test (tests/conftest.py calls this after collection):
    a cold run is about 45 s of CPU, which then overlaps the end-to-end tests' waiting instead of adding to the
    run's wall time."""
    global _early
    if _early is None:
        _early = _Mypy()


def stop_early() -> None:
    global _early
    if _early is not None:
        _early.stop()
        _early = None


@pytest.mark.timeout(600)  # a cold run took 163 s on 2 busy cores (44 s of CPU)
def test_mypy_finds_no_error() -> None:
    global _early
    mypy, _early = _early or _Mypy(), None
    try:
        code, output = mypy.result(timeout=580)
    finally:
        mypy.stop()
    assert code == 0, output
