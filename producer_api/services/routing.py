"""Routing: a request's model and voice resolved against the model registry, and what the engines advertise."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from producer_api.errors import ApiError
from producer_api.models import SpeechRequest
from voicenote.adverts import EngineAdvert, read_adverts
from voicenote.models import Model, ModelRegistry, UnknownModel, UnknownVoiceName, Voice


@dataclass(frozen=True)
class Routed:
    """A request resolved against the model registry: where it goes and what its engine will ignore."""

    request: SpeechRequest
    model: Model
    voice: Voice
    ignored: list[str]


class ModelRouter:
    def __init__(self, *, models: ModelRegistry, redis: aioredis.Redis, key_prefix: str) -> None:
        self.models = models
        self._redis = redis
        self._prefix = key_prefix

    def route(self, req: SpeechRequest, where: str = "") -> Routed:
        """Resolve ``model`` and ``voice``; 400 naming the valid ones when either is unknown."""
        try:
            model = self.models.get(req.model)
        except UnknownModel as exc:
            raise ApiError(400, str(exc), param=f"{where}model", code="model_not_found") from None
        try:
            voice = model.resolve_voice(req.voice)
        except UnknownVoiceName as exc:
            raise ApiError(400, str(exc), param=f"{where}voice", code="unknown_voice") from None
        return Routed(req, model, voice, model.ignored(req.model_dump()))

    def find(self, name: str) -> Model:
        """A model by id or alias; 404 when this deployment does not serve it."""
        try:
            return self.models.get(name)
        except UnknownModel as exc:
            raise ApiError(404, str(exc), param="model", code="model_not_found") from None

    async def running_engines(self) -> dict[str, EngineAdvert]:
        """By model family, what the running synthesis workers advertise (families with no live worker are absent)."""
        return await read_adverts(self._redis, self._prefix, sorted({m.family for m in self.models.models}))
