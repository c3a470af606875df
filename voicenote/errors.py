"""The project's exception tree. Vendor errors are translated into these at the boundary.

The root (:class:`VoicenoteError`) and :class:`DependencyUnavailable` are defined in ``schemas.errors``
(the contract, the lowest layer, needs them and imports nothing above it) and re-exported here, so the
rest of the code imports every error from this module or from the module that raises it. The tree:

- ``VoicenoteError``
  - ``ConfigError``
  - ``InvalidInput`` (also a ``ValueError``): ``voicenote.audio.UnsupportedFormat`` (``EncodeFailed``),
    ``voicenote.voices.UnknownVoiceName``
  - ``DependencyUnavailable``: ``PublishError`` (kafka), ``StorageError`` (storage), ``JobStoreError``
    (redis: the job records), ``ResultCacheError`` (redis: the result cache)
  - ``AudioNotFound``
  - ``schemas.errors``: ``SchemaError``, ``DecodeError``, ``EncodeError``
  - ``stream_workers.engine.base.EngineError``: ``EngineOutOfMemory``, ``UnknownVoice``, ``CheckpointError``,
    ``EmptyUtterance``
  - ``stream_workers.webhooks.policy.WebhookRefused``
  - ``producer_api.errors.ApiError`` (an HTTP answer in OpenAI's envelope)
"""

from schemas.errors import DependencyUnavailable, VoicenoteError

__all__ = [
    "AudioNotFound", "ConfigError", "DependencyUnavailable", "InvalidInput", "JobStoreError", "PublishError",
    "ResultCacheError", "StorageError", "VoicenoteError",
]


class ConfigError(VoicenoteError):
    """A setting is missing or invalid; start-up stops with this message."""


class InvalidInput(VoicenoteError, ValueError):
    """A value a caller chose is not one we accept (a ``ValueError`` too, so pydantic validators report it)."""


class PublishError(DependencyUnavailable):
    """The broker did not acknowledge a record."""

    def __init__(self, message: str) -> None:
        super().__init__("kafka", message)


class StorageError(DependencyUnavailable):
    def __init__(self, message: str) -> None:
        super().__init__("storage", message)


class JobStoreError(DependencyUnavailable):
    """Redis did not answer a read or write of job records (the status projection, batches, idempotency keys)."""

    def __init__(self, message: str) -> None:
        super().__init__("redis", message)


class ResultCacheError(DependencyUnavailable):
    """Redis did not answer a result-cache lookup or record."""

    def __init__(self, message: str) -> None:
        super().__init__("redis", message)


class AudioNotFound(VoicenoteError):
    """No stored audio under that key."""
