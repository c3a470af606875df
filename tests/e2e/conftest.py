from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack
from voicenote.settings import Settings


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    s = Stack(settings=settings, log_dir=log_dir)
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture(scope="module")
def module_stack(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for a whole test module, on the module's own names (``module_settings``): for modules whose
    tests all run the same processes with the same configuration and stop or break none of them. Starting the
    API and two workers costs several seconds of CPU per test; each test still makes its own requests and
    reads back its own jobs. A module that stops, pauses or reconfigures a process uses ``stack``."""
    s = Stack(settings=module_settings, log_dir=tmp_path_factory.mktemp("logs"))
    try:
        yield s
    finally:
        s.stop_all()
