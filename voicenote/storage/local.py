"""Local-filesystem audio storage for the embedded default (the API serves the bytes)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from voicenote.errors import AudioNotFound, StorageError
from voicenote.storage.base import Put, StoredObject


class LocalAudioStore:
    """Files under ``root``; like the S3 lifecycle rule, a file older than ``ttl_seconds`` is gone.

    ``ttl_prefix``: as the lifecycle rule's filter, only keys under it expire (None: every key). The service
    passes ``storage.key_prefix``, so registered voices (``voices/``, docs/voices.md) are kept.
    """

    def __init__(self, root: Path, ttl_seconds: int | None = None, ttl_prefix: str | None = None) -> None:
        self.root = root.resolve()
        self.ttl_seconds = ttl_seconds
        self.ttl_prefix = ttl_prefix
        self._root_prefix = str(self.root) + os.sep

    def _path(self, key: str) -> Path:
        # Lexical: keys are ours or come from events; ".." or an absolute key cannot leave the root.
        path = os.path.normpath(os.path.join(self._root_prefix, key))
        if not path.startswith(self._root_prefix):
            raise StorageError(f"key {key!r} escapes the storage root")
        return Path(path)

    async def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str] | None = None) -> StoredObject:
        return (await self.put_many([Put(key, data, content_type, metadata or {})]))[0]

    async def put_many(self, puts: Sequence[Put]) -> list[StoredObject]:
        paths = [self._path(p.key) for p in puts]
        # One trip to a thread for the whole group: the hop costs more than writing a short note.
        await asyncio.to_thread(_write_all, [(path, p.data) for path, p in zip(paths, puts, strict=True)])
        return [StoredObject(key=p.key, uri=path.as_uri(), size=len(p.data), content_type=p.content_type)
                for path, p in zip(paths, puts, strict=True)]

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            if self._expired(key, path.stat().st_mtime, time.time()):
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
            return not self._expired(key, path.stat().st_mtime, time.time())
        except FileNotFoundError:
            return False

    async def list_keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list, prefix, time.time())

    def _list(self, prefix: str, now: float) -> list[str]:
        # The deepest folder the prefix names whole: "voices/vc_1/" walks voices/vc_1, "voices/vc" walks voices.
        folder = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not folder.is_dir():
            return []
        keys = []
        for path in folder.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if (key.startswith(prefix) and not path.name.endswith(".tmp") and path.is_file()
                    and not self._expired(key, path.stat().st_mtime, now)):
                keys.append(key)
        return sorted(keys)

    async def delete_many(self, keys: Sequence[str]) -> None:
        paths = [self._path(key) for key in keys]
        await asyncio.to_thread(_unlink_all, paths, self.root)

    async def url_for(self, key: str, expires_in: int) -> str | None:
        return None

    def _expired(self, key: str, mtime: float, now: float) -> bool:
        return (self.ttl_seconds is not None and now - mtime > self.ttl_seconds
                and (self.ttl_prefix is None or key.startswith(self.ttl_prefix)))

    async def provision(self) -> None:
        """Create the root and sweep expired files (the local counterpart of the S3 lifecycle rule)."""
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        await self.expire()

    async def expire(self, now: float | None = None) -> list[str]:
        """Delete files older than the TTL; returns their keys."""
        return await asyncio.to_thread(self._sweep, time.time() if now is None else now)

    def _sweep(self, now: float) -> list[str]:
        removed: list[str] = []
        if self.ttl_seconds is None or not self.root.is_dir():
            return removed
        for path in self.root.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and self._expired(key, path.stat().st_mtime, now):
                path.unlink(missing_ok=True)
                removed.append(key)
        return removed

    async def ping(self) -> bool:
        return self.root.is_dir() or not self.root.exists()

    async def close(self) -> None:
        return None


def _unlink_all(paths: list[Path], root: Path) -> None:
    try:
        for path in paths:
            path.unlink(missing_ok=True)
            # Empty folders left behind go too (never the root): a deleted voice leaves no directory.
            parent = path.parent
            while parent != root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    except OSError as exc:
        raise StorageError(f"cannot delete {path}: {exc}") from exc


def _write_all(writes: list[tuple[Path, bytes]]) -> None:
    for path, data in writes:
        _atomic_write(path, data)


def _atomic_write(path: Path, data: bytes) -> None:
    # Write then rename, so a reader never sees half a file and a redelivery replaces it whole.
    tmp = f"{path.parent}{os.sep}.{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        try:
            out = open(tmp, "wb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:  # a new shard directory (made once, not checked per write)
            path.parent.mkdir(parents=True, exist_ok=True)
            out = open(tmp, "wb")  # noqa: SIM115
        with out:
            out.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc
