"""The root of Voicenote's exception tree, and the errors of the contract layer.

The root lives here, on the ground floor, so that ``schemas/`` imports nothing of ours above it and
every other package reaches the one root by importing downwards. ``voicenote.errors`` re-exports it
together with the runtime's own errors; import from there outside ``schemas/``.
"""


class VoicenoteError(Exception):
    """Root of every error Voicenote raises on purpose."""


class DependencyUnavailable(VoicenoteError):
    """A backing service (Kafka, Redis, storage, registry) did not answer."""

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(message)
        self.dependency = dependency


class SchemaError(VoicenoteError):
    """A shipped schema is missing or invalid (raised at start-up)."""


class DecodeError(VoicenoteError):
    """Bytes that are not a valid event; ``reason`` is the dead-letter error type."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EncodeError(VoicenoteError):
    """A record that does not match its schema."""
