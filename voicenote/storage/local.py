"""Local-filesystem audio storage for the embedded default (the API serves the bytes)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from voicenote.errors import AudioNotFound, StorageError
from voicenote.storage.base import StoredObject


class LocalAudioStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

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
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise AudioNotFound(key) from None
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc

    async def url_for(self, key: str, expires_in: int) -> str | None:
        return None

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
