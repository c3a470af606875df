"""Audio storage behind one small interface: local filesystem (embedded default) or S3."""

from voicenote.settings import StorageBackend, StorageSettings
from voicenote.storage.base import AudioStore, StoredObject, audio_key


def build_store(settings: StorageSettings) -> AudioStore:
    """The store the settings name."""
    if settings.backend is StorageBackend.s3:
        from voicenote.storage.s3 import S3AudioStore

        return S3AudioStore(settings)
    from voicenote.storage.local import LocalAudioStore

    return LocalAudioStore(settings.local_dir, ttl_seconds=settings.lifecycle_days * 24 * 3600, ttl_prefix=settings.key_prefix)


__all__ = ["AudioStore", "StoredObject", "audio_key", "build_store"]
