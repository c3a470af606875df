"""Errors of the contract layer."""

from voicenote.errors import VoicenoteError


class SchemaError(VoicenoteError):
    """A shipped schema is missing or invalid (raised at start-up)."""


class DecodeError(VoicenoteError):
    """Bytes that are not a valid event; ``reason`` is the dead-letter error type."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EncodeError(VoicenoteError):
    """A record that does not match its schema."""
