"""API keys: Bearer tokens checked against their SHA-256 from settings; scopes give 403s.

Tokens are never stored: settings hold ``sha256(token)`` only (``hash_token`` makes one). With
``api.allow_anonymous`` (the embedded default sets it explicitly) a request without a token is served
as the ``anonymous`` caller, rate-limited per client address. A token that is sent is still checked
when keys are configured; with no keys at all it is ignored, because OpenAI's clients always send one.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from producer_api.errors import ApiError
from voicenote.errors import ConfigError
from voicenote.settings import ApiSettings

# admin: read every job, including those published straight to Kafka without an owner.
SCOPES = ("speech", "jobs", "admin")


@dataclass(frozen=True)
class Caller:
    name: str  # the key's name; owner of the jobs it submits
    scopes: frozenset[str]
    rate_key: str  # whose token bucket is charged
    rate_per_second: float
    burst: int

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise ApiError(403, f"API key {self.name!r} lacks the {scope!r} permission", type_="permission_error",
                           code="insufficient_permissions")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh token and its hash, for configuring a key."""
    token = "vn-" + secrets.token_urlsafe(32)
    return token, hash_token(token)


class Authenticator:
    def __init__(self, settings: ApiSettings) -> None:
        if not settings.keys and not settings.allow_anonymous:
            raise ConfigError("api.keys is empty: configure keys (VOICENOTE_API__KEYS, hashed) "
                              "or set VOICENOTE_API__ALLOW_ANONYMOUS=true explicitly")
        for key in settings.keys:
            unknown = set(key.scopes) - set(SCOPES)
            if unknown:
                raise ConfigError(f"api key {key.name!r} has unknown scopes {sorted(unknown)}; known: {list(SCOPES)}")
        self._by_hash = {
            k.sha256: Caller(k.name, frozenset(k.scopes), f"key:{k.name}", k.rate_per_second or settings.rate_per_second,
                             k.burst or settings.rate_burst)
            for k in settings.keys
        }
        self._anonymous = settings.allow_anonymous
        self._rate, self._burst = settings.rate_per_second, settings.rate_burst

    def authenticate(self, authorization: str | None, client_host: str | None) -> Caller:
        if not authorization or (self._anonymous and not self._by_hash):
            if self._anonymous:
                # With no keys at all the service is single-tenant: anonymous may read every job. Next to
                # keys, it must not read theirs.
                scopes = frozenset(SCOPES) if not self._by_hash else frozenset(SCOPES) - {"admin"}
                return Caller("anonymous", scopes, f"ip:{client_host or 'unknown'}", self._rate, self._burst)
            raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'", "missing_api_key")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("malformed Authorization header: expected 'Bearer <key>'", "invalid_api_key")
        caller = self._by_hash.get(hash_token(token.strip()))
        if caller is None:
            raise _unauthorized("incorrect API key provided", "invalid_api_key")
        return caller


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(401, message, type_="invalid_request_error", code=code, headers={"WWW-Authenticate": 'Bearer realm="voicenote"'})
