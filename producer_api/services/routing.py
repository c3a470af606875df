"""Routing: a request's model and voice resolved against the model registry, and what the engines advertise."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from urllib.parse import quote

import redis.asyncio as aioredis

from producer_api.auth import Caller
from producer_api.errors import ApiError
from producer_api.models import SpeechRequest
from producer_api.services.voices import VoiceRegistry
from voicenote.adverts import EngineAdvert, read_adverts
from voicenote.models import Model, ModelRegistry, UnknownModel, UnknownVoiceName, Voice
from voicenote.registered_voices import is_voice_id
from voicenote.settings import EngineKind

INLINE_REFERENCE = Voice("", "the request's inline reference (stored by ModelRouter.bind)")


@dataclass(frozen=True)
class Routed:
    """A request resolved against the model registry: where it goes and what its engine will ignore."""

    request: SpeechRequest
    model: Model
    voice: Voice
    ignored: list[str]


# The other spellings our native endpoints accept (BatchItem's aliases): on the OpenAI endpoint, sent instead of
# the OpenAI field, ignoring them would silently give the default voice or format.
NATIVE_ALIASES = {"text": "input", "voice_id": "voice", "format": "response_format"}
MAX_EXTRA_FIELDS = 32  # every one is named in a header: bounded, so the answer's headers stay small
MAX_EXTRA_NAME = 64
_SPELLING = re.compile(r"[^a-z0-9]")


def _spelling(name: str) -> str:
    return _SPELLING.sub("", name.lower())


def check_extra_fields(req: SpeechRequest, where: str = "") -> list[str]:
    """The unknown fields of ``req`` (the OpenAI endpoint accepts them), as named in the ignored-params header.

    Refused (400 naming the field) where ignoring it would silently drop what the caller meant: a field of ours
    in another spelling (``responseFormat``, ``Speed``) or misspelt (``respone_format``, ``webook_url``), and
    ``text``/``voice_id``/``format`` (our batch endpoint's names) sent without the OpenAI field they stand for.
    Names are percent-encoded for the header; more than ``MAX_EXTRA_FIELDS`` of them is refused too."""
    extra = req.model_extra or {}
    if not extra:
        return []
    known = [name for name in type(req).model_fields]
    by_spelling = {_spelling(name): name for name in known}
    for name in extra:
        target = NATIVE_ALIASES.get(name)
        if target is not None and target not in req.model_fields_set:
            raise ApiError(400, f"{name!r} is not a field of this endpoint (OpenAI's speech request); send {target!r}",
                           param=f"{where}{name}", code="invalid_request")
        same = by_spelling.get(_spelling(name))
        close = [same] if same and same != name else difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if close:
            raise ApiError(400, f"unknown field {name!r}: did you mean {close[0]!r}? (unknown fields are otherwise "
                                "ignored, and this one looks like a field that would change the answer)",
                           param=f"{where}{name}", code="invalid_request")
    if len(extra) > MAX_EXTRA_FIELDS:
        raise ApiError(400, f"{len(extra)} unknown fields; at most {MAX_EXTRA_FIELDS} are accepted (and ignored)",
                       param=None, code="invalid_request")
    names = []
    for name in sorted(extra):
        if not name or len(name) > MAX_EXTRA_NAME:
            raise ApiError(400, f"unknown field names must be 1 to {MAX_EXTRA_NAME} characters long",
                           param=f"{where}{name[:MAX_EXTRA_NAME]}", code="invalid_request")
        names.append(quote(name, safe="_-.~", errors="surrogatepass"))  # JSON may carry a lone surrogate
    return names


class ModelRouter:
    def __init__(self, *, models: ModelRegistry, redis: aioredis.Redis, key_prefix: str, voices: VoiceRegistry | None = None) -> None:
        self.models = models
        self._redis = redis
        self._prefix = key_prefix
        self.voices = voices

    def route(self, req: SpeechRequest, where: str = "") -> Routed:
        """Resolve ``model`` and ``voice``; 400 naming the valid ones when either is unknown."""
        try:
            model = self.models.get(req.model)
        except UnknownModel as exc:
            raise ApiError(400, str(exc), param=f"{where}model", code="model_not_found") from None
        if req.references or is_voice_id(req.voice):
            voice = self._registered_voice(req, model, where)
        else:
            try:
                voice = model.resolve_voice(req.voice)
            except UnknownVoiceName as exc:
                raise ApiError(400, str(exc), param=f"{where}voice", code="unknown_voice") from None
        if req.timestamps and not model.word_timestamps:
            raise ApiError(400, f"model {model.id!r} cannot time words: its engine ({model.engine.value}) gives no word "
                                "timestamps; use a Piper model (tts-1) or leave timestamps unset",
                           param=f"{where}timestamps", code="timestamps_unsupported")
        extra = check_extra_fields(req, where)
        return Routed(req, model, voice, model.ignored(req.model_dump()) + extra)

    @staticmethod
    def _registered_voice(req: SpeechRequest, model: Model, where: str) -> Voice:
        """A registered voice (vc_...) or inline references: S1-mini models only; checked against the store by bind."""
        param = f"{where}references" if req.references else f"{where}voice"
        if model.engine is not EngineKind.s1mini:
            what = "inline references" if req.references else f"registered voice {req.voice!r}"
            raise ApiError(400, f"{what} can only be spoken by an S1-mini model (s1-mini); model {model.id!r} is "
                                f"{model.engine.value}: send model 's1-mini', or a voice of {model.id!r}",
                           param=param, code="voice_model_mismatch")
        if req.references:
            if len(req.references) > 1:
                raise ApiError(400, f"send one reference (got {len(req.references)}): this service clones from one clip "
                                    "of 3-30 s (fish-speech joins several)", param=param, code="too_many_references")
            return INLINE_REFERENCE
        return Voice(req.voice, "a registered voice")

    async def bind(self, caller: Caller, routed: Routed, where: str = "") -> Routed:
        """The registered voice checked (exists, the caller's: 404 otherwise), inline references stored as an
        ephemeral voice of the caller; the routed request then names that voice."""
        req = routed.request
        if not req.references and not is_voice_id(routed.voice.id):
            return routed
        if self.voices is None:
            raise ApiError(400, "this deployment has no voice registry", param=f"{where}voice", code="voice_not_found")
        if req.references:
            voice_id = await self.voices.register_inline(caller, req.references[0], where)
            return replace(routed, voice=Voice(voice_id, "an inline reference (ephemeral voice)"))
        try:
            await self.voices.get(caller, routed.voice.id)
        except ApiError as exc:
            exc.param = f"{where}voice"
            raise
        return routed

    async def route_for(self, caller: Caller, req: SpeechRequest, where: str = "") -> Routed:
        """:meth:`route`, then :meth:`bind`."""
        return await self.bind(caller, self.route(req, where), where)

    def find(self, name: str) -> Model:
        """A model by id or alias; 404 when this deployment does not serve it."""
        try:
            return self.models.get(name)
        except UnknownModel as exc:
            raise ApiError(404, str(exc), param="model", code="model_not_found") from None

    async def running_engines(self) -> dict[str, EngineAdvert]:
        """By model family, what the running synthesis workers advertise (families with no live worker are absent)."""
        return await read_adverts(self._redis, self._prefix, sorted({m.family for m in self.models.models}))
