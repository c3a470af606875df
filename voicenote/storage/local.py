"""Local-filesystem audio storage for the embedded default (the API serves the bytes)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from voicenote.errors import AudioNotFound, StorageError
from voicenote.storage.base import StoredObject


class LocalAudioStore:
    """Files under ``root``; like the S3 lifecycle rule, a file older than ``ttl_seconds`` is gone."""

    def __init__(self, root: Path, ttl_seconds: int | None = None) -> None:
        self.root = root.resolve()
        self.ttl_seconds = ttl_seconds

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StorageError(f"key {key!r} escapes the storage root")
        return path

    async def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> StoredObject:
        path = self._path(key)
        await asyncio.to_thread(_atomic_write, path, data)
        return StoredObject(key=key, uri=path.as_uri(), size=len(data), content_type=content_type)

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            if self._expired(path.stat().st_mtime, time.time()):
                await asyncio.to_thread(path.unlink, missing_ok=True)
                raise AudioNotFound(key)
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise AudioNotFound(key) from None
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc

    async def exists(self, key: str) -> bool:
        path = self._path(key)
        try:
            return not self._expired(path.stat().st_mtime, time.time())
        except FileNotFoundError:
            return False

    async def url_for(self, key: str, expires_in: int) -> str | None:
        return None

    def _expired(self, mtime: float, now: float) -> bool:
        return self.ttl_seconds is not None and now - mtime > self.ttl_seconds

    async def provision(self) -> None:
        """Create the root and sweep expired files (the local counterpart of the S3 lifecycle rule)."""
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        await self.expire()

    async def expire(self, now: float | None = None) -> list[str]:
        """Delete files older than the TTL; returns their keys."""
        return await asyncio.to_thread(self._sweep, time.time() if now is None else now)

    def _sweep(self, now: float) -> list[str]:
        removed = []
        if self.ttl_seconds is None or not self.root.is_dir():
            return removed
        for path in self.root.rglob("*"):
            if path.is_file() and self._expired(path.stat().st_mtime, now):
                path.unlink(missing_ok=True)
                removed.append(path.relative_to(self.root).as_posix())
        return removed

    async def ping(self) -> bool:
        return self.root.is_dir() or not self.root.exists()

    async def close(self) -> None:
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    # Write then rename, so a reader never sees half a file and a redelivery replaces it whole.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc
