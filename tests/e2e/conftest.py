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
