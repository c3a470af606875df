"""The project's exception tree. Vendor errors are translated into these at the boundary."""


class VoicenoteError(Exception):
    """Root of every error Voicenote raises on purpose."""


class ConfigError(VoicenoteError):
    """A setting is missing or invalid; start-up stops with this message."""


class DependencyUnavailable(VoicenoteError):
    """A backing service (Kafka, Redis, storage, registry) did not answer."""

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(message)
        self.dependency = dependency


class PublishError(DependencyUnavailable):
    """The broker did not acknowledge a record."""

    def __init__(self, message: str) -> None:
        super().__init__("kafka", message)


class StorageError(DependencyUnavailable):
    def __init__(self, message: str) -> None:
        super().__init__("storage", message)


class JobStoreError(DependencyUnavailable):
    def __init__(self, message: str) -> None:
        super().__init__("redis", message)


class AudioNotFound(VoicenoteError):
    """No stored audio under that key."""
