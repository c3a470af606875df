"""The models and the voices they serve (``GET /v1/models``, ``GET /v1/audio/voices``)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Path, Query

from producer_api.deps import Jobs, Submitter
from producer_api.errors import ApiError
from producer_api.models import ModelCard, ModelList, ModelVoices, RunningEngine, VoiceInfo, VoiceList
from producer_api.routes.examples import ERRORS, NOT_FOUND
from voicenote.adverts import EngineAdvert
from voicenote.models import Model, UnknownModel

router = APIRouter(prefix="/v1", tags=["models"])


def _card(model: Model) -> ModelCard:
    return ModelCard(id=model.id, aliases=list(model.aliases), engine=model.engine.value, family=model.family,
                     description=model.description, sample_rate=model.sample_rate, default_voice=model.default_voice,
                     parameters=sorted(model.honours), ignored_parameters=dict(sorted(model.ignored_notes.items())))


def _voices(model: Model, advert: EngineAdvert | None) -> ModelVoices:
    names = {name: model.resolve_voice(name).id for name in model.voice_names()}
    return ModelVoices(model=model.id, aliases=list(model.aliases), engine=model.engine.value, default_voice=model.default_voice,
                       voices=[VoiceInfo(id=v.id, description=v.description) for v in model.voices], voice_names=names,
                       running=RunningEngine(**asdict(advert)) if advert else None)


def _model(jobs: Jobs, name: str) -> Model:
    try:
        return jobs.models.get(name)
    except UnknownModel as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from None


@router.get("/models", response_model=ModelList, summary="The models this deployment serves (OpenAI's list shape)",
            responses={**ERRORS})
async def list_models(caller: Submitter, jobs: Jobs) -> ModelList:
    return ModelList(data=[_card(m) for m in jobs.models.models])


@router.get("/models/{model}", response_model=ModelCard, summary="One model, by id or alias", responses={**ERRORS, **NOT_FOUND})
async def get_model(caller: Submitter, jobs: Jobs, model: str = Path(..., max_length=64)) -> ModelCard:
    return _card(_model(jobs, model))


@router.get("/audio/voices", response_model=VoiceList,
            summary="Per model, the voices its engine serves, the names that reach them, and what its running workers advertise",
            responses={**ERRORS, **NOT_FOUND})
async def list_voices(caller: Submitter, jobs: Jobs,
                      model: str | None = Query(None, max_length=64, description="Only this model (id or alias).")) -> VoiceList:
    models = [_model(jobs, model)] if model else list(jobs.models.models)
    running = await jobs.running_engines()
    return VoiceList(data=[_voices(m, running.get(m.family)) for m in models])
