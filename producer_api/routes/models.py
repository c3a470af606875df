"""The models and the voices they serve (``GET /v1/models``, ``GET /v1/audio/voices``)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Path, Query

from producer_api.deps import Router, Submitter
from producer_api.models import ModelCard, ModelList, ModelVoices, RunningEngine, VoiceInfo, VoiceList
from producer_api.routes.examples import ERRORS, NOT_FOUND
from voicenote.adverts import EngineAdvert
from voicenote.models import Model

router = APIRouter(prefix="/v1", tags=["models"])


def _card(model: Model) -> ModelCard:
    return ModelCard(id=model.id, aliases=list(model.aliases), engine=model.engine.value, family=model.family,
                     description=model.description, sample_rate=model.sample_rate, default_voice=model.default_voice,
                     parameters=sorted(model.honours), ignored_parameters=dict(sorted(model.ignored_notes.items())),
                     word_timestamps=model.word_timestamps)


def _voices(model: Model, advert: EngineAdvert | None) -> ModelVoices:
    names = {name: model.resolve_voice(name).id for name in model.voice_names()}
    return ModelVoices(model=model.id, aliases=list(model.aliases), engine=model.engine.value, default_voice=model.default_voice,
                       voices=[VoiceInfo(id=v.id, description=v.description) for v in model.voices], voice_names=names,
                       running=RunningEngine(**asdict(advert)) if advert else None)


@router.get("/models", response_model=ModelList, summary="The models this deployment serves (OpenAI's list shape)",
            responses={**ERRORS})
async def list_models(caller: Submitter, router: Router) -> ModelList:
    return ModelList(data=[_card(m) for m in router.models.models])


@router.get("/models/{model}", response_model=ModelCard, summary="One model, by id or alias", responses={**ERRORS, **NOT_FOUND})
async def get_model(caller: Submitter, router: Router, model: str = Path(..., max_length=64)) -> ModelCard:
    return _card(router.find(model))


@router.get("/audio/voices", response_model=VoiceList,
            summary="Per model, the voices its engine serves, the names that reach them, and what its running workers advertise",
            responses={**ERRORS, **NOT_FOUND})
async def list_voices(caller: Submitter, router: Router,
                      model: str | None = Query(None, max_length=64, description="Only this model (id or alias).")) -> VoiceList:
    models = [router.find(model)] if model else list(router.models.models)
    running = await router.running_engines()
    names = list(dict.fromkeys(name for m in models for name in m.voice_names()))
    return VoiceList(data=[_voices(m, running.get(m.family)) for m in models], voices=names)
