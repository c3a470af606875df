"""ops/image_size.py (the GPU image's size estimate in docs/deployment.md) counts a wheel's unpacked bytes
from its zip directory and says what it could not count."""

from __future__ import annotations

import zipfile
from pathlib import Path

from ops.image_size import sizes


def test_local_wheels_are_measured_and_a_source_tree_is_skipped(tmp_path: Path) -> None:
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("demo/__init__.py", "x = 1\n" * 1000)  # 6000 bytes, compressing well
        z.writestr("demo/data.bin", bytes(range(256)) * 4)  # 1024 bytes
    report = {"install": [
        {"metadata": {"name": "demo", "version": "1.0"}, "download_info": {"url": wheel.as_uri()}},
        {"metadata": {"name": "voicenote", "version": "0.1.0"}, "download_info": {"url": tmp_path.as_uri()}},
    ]}
    rows, skipped = sizes(report)
    assert rows == [("demo", "1.0", wheel.stat().st_size, 7024)]
    assert wheel.stat().st_size < 7024
    assert len(skipped) == 1 and skipped[0].startswith("voicenote (")
