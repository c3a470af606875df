"""Estimate an image's Python layer from a pip resolution, without Docker and without downloading wheels.

    pip install --dry-run --ignore-installed --report r.json '.[s1mini]' torch==2.10.0 \\
        --python-version 3.12 --only-binary=:all: --target /tmp/x \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64
    python -m ops.image_size r.json

For each wheel of the report: its download size from PyPI's simple index (PEP 691 JSON) and its unpacked
size from its zip directory, read with HTTP range requests (only the wheel's last bytes are fetched).
Wheels from a local directory or find-links are read in place; the project itself (a source tree) is
skipped and said so. Not counted: the base image, and the bytecode pip compiles at install.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx


class _RangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote file over HTTP range requests."""

    def __init__(self, client: httpx.Client, url: str, size: int) -> None:
        self._client, self._url, self._size, self._pos = client, url, size, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = {0: offset, 1: self._pos + offset, 2: self._size + offset}[whence]
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        resp = self._client.get(self._url, headers={"Range": f"bytes={self._pos}-{self._pos + n - 1}"})
        resp.raise_for_status()
        data = resp.content[:n]
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


def _unpacked(z: zipfile.ZipFile) -> int:
    return sum(e.file_size for e in z.infolist())


def sizes(report: dict[str, Any]) -> tuple[list[tuple[str, str, int, int]], list[str]]:
    """(name, version, wheel bytes, unpacked bytes) per wheel of a ``pip --report``, and what was skipped."""
    rows: list[tuple[str, str, int, int]] = []
    skipped: list[str] = []
    with httpx.Client(timeout=120, follow_redirects=True) as client:
        for item in report["install"]:
            meta, url = item["metadata"], item["download_info"]["url"]
            name = meta["name"]
            if url.startswith("file://"):
                path = Path(unquote(urlsplit(url).path))
                if path.suffix != ".whl":
                    skipped.append(f"{name} ({url}: not a wheel)")
                    continue
                with zipfile.ZipFile(path) as z:
                    rows.append((name, meta["version"], path.stat().st_size, _unpacked(z)))
                continue
            filename = url.rsplit("/", 1)[-1]
            index = client.get(f"https://pypi.org/simple/{name.lower().replace('_', '-')}/",
                               headers={"Accept": "application/vnd.pypi.simple.v1+json"})
            index.raise_for_status()
            entry = next((f for f in index.json()["files"] if f["filename"] == filename), None)
            if entry is None:
                skipped.append(f"{name} ({filename} not in PyPI's index)")
                continue
            remote = io.BufferedReader(_RangeFile(client, entry["url"], entry["size"]), buffer_size=1 << 20)
            with zipfile.ZipFile(remote) as z:  # type: ignore[arg-type]
                rows.append((name, meta["version"], entry["size"], _unpacked(z)))
    return rows, skipped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the JSON of `pip install --dry-run --report`")
    args = parser.parse_args()
    rows, skipped = sizes(json.loads(args.report.read_text()))
    for name, version, wheel, unpacked in sorted(rows, key=lambda r: -r[3]):
        print(f"{name:30s} {version:16s} wheel {wheel / 1e6:9.1f} MB  unpacked {unpacked / 1e6:9.1f} MB")
    for line in skipped:
        print(f"skipped: {line}")
    print(f"{len(rows)} wheels: {sum(r[2] for r in rows) / 1e9:.2f} GB to download, "
          f"{sum(r[3] for r in rows) / 1e9:.2f} GB unpacked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
