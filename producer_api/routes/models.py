"""The models and the voices they serve (``GET /v1/models``, ``GET /v1/audio/voices``, with the caller's registered voices)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Path, Query

from producer_api.deps import Router, Submitter, Voices
from producer_api.models import ModelCard, ModelList, ModelVoices, RegisteredVoice, RunningEngine, VoiceInfo, VoiceList
from producer_api.routes.examples import ERRORS, NOT_FOUND
from producer_api.services.voices import voice_object
from voicenote.adverts import EngineAdvert
from voicenote.models import Model
from voicenote.registered_voices import VoiceMeta
from voicenote.settings import EngineKind

router = APIRouter(prefix="/v1", tags=["models"])


def _card(model: Model) -> ModelCard:
    return ModelCard(id=model.id, aliases=list(model.aliases), engine=model.engine.value, family=model.family,
                     description=model.description, sample_rate=model.sample_rate, default_voice=model.default_voice,
                     parameters=sorted(model.honours), ignored_parameters=dict(sorted(model.ignored_notes.items())),
                     word_timestamps=model.word_timestamps)


def _voices(model: Model, advert: EngineAdvert | None, registered: list[VoiceMeta]) -> ModelVoices:
    names = {name: model.resolve_voice(name).id for name in model.voice_names()}
    voices = [VoiceInfo(id=v.id, description=v.description) for v in model.voices]
    if model.engine is EngineKind.s1mini:  # registered voices are S1-mini's only
        voices += [VoiceInfo(id=m.voice_id, description=f"registered: {m.name}" if m.name else "registered") for m in registered]
        names.update({m.voice_id: m.voice_id for m in registered})
    return ModelVoices(model=model.id, aliases=list(model.aliases), engine=model.engine.value, default_voice=model.default_voice,
                       voices=voices, voice_names=names, running=RunningEngine(**asdict(advert)) if advert else None)


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
async def list_voices(caller: Submitter, router: Router, registry: Voices,
                      model: str | None = Query(None, max_length=64, description="Only this model (id or alias).")) -> VoiceList:
    models = [router.find(model)] if model else list(router.models.models)
    running = await router.running_engines()
    registered = await registry.owned(caller)
    data = [_voices(m, running.get(m.family), registered) for m in models]
    names = list(dict.fromkeys(name for m in data for name in [v.id for v in m.voices] + list(m.voice_names)))
    return VoiceList(data=data, voices=names, registered=[RegisteredVoice(**voice_object(m)) for m in registered])
