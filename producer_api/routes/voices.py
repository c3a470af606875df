"""Registered voices (docs/voices.md): ``POST /v1/audio/voices`` (a clip and its transcript), ``GET`` and ``DELETE``
of one. The list is ``GET /v1/audio/voices`` (producer_api/routes/models.py), with the built-in voices."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, UploadFile

from producer_api.deps import Submitter, Voices
from producer_api.errors import ApiError
from producer_api.models import RegisteredVoice
from producer_api.routes.examples import ERRORS, Responses, error_example
from producer_api.services.voices import voice_object

router = APIRouter(prefix="/v1/audio", tags=["voices"])

VOICE_NOT_FOUND: Responses = dict([error_example(404, "No such voice, or another key's", "no voice 'vc_0123456789abcdef01234567' "
                                        "registered with this API key; GET /v1/audio/voices lists yours",
                                        "invalid_request_error", "voice_not_found", "voice")])
BAD_CLIP: Responses = dict([error_example(400, "The clip or its transcript cannot be used: code clip_too_short, clip_too_long, "
                                 "clip_silent, clip_undecodable, clip_format_unsupported, clip_too_large, clip_missing, "
                                 "transcript_missing, transcript_too_long, invalid_name",
                                 "the clip is 1.20 s long; send at least 3 s (up to 30 s) of one speaker",
                                 "invalid_request_error", "clip_too_short", "audio")])
VoiceId = Path(..., max_length=64, description="The voice's id, vc_ and 24 hex characters.")


@router.post("/voices", status_code=201, response_model=RegisteredVoice, summary="Register a voice from a clip (S1-mini)",
             responses={**ERRORS, **BAD_CLIP})
async def register_voice(
    caller: Submitter, voices: Voices,
    audio: Annotated[UploadFile | None, File(description="The clip: wav, mp3, flac or ogg, 3-30 s of one speaker.")] = None,
    transcript: Annotated[str | None, Form(description="What the clip says, word for word (required).")] = None,
    name: Annotated[str | None, Form(description="A label of yours (optional, at most 64 characters).")] = None,
) -> RegisteredVoice:
    if audio is None:
        raise ApiError(400, "the form has no 'audio' file: send the clip as multipart/form-data field 'audio' "
                            "(curl -F audio=@clip.wav)", param="audio", code="clip_missing")
    data = await audio.read()  # bounded: the body limit of this route (api.voice_upload_max_bytes) was enforced
    meta = await voices.register(caller, data, transcript, name)
    return RegisteredVoice(**voice_object(meta))


@router.get("/voices/{voice_id}", response_model=RegisteredVoice, summary="One of your registered voices",
            responses={**ERRORS, **VOICE_NOT_FOUND})
async def get_voice(caller: Submitter, voices: Voices, voice_id: str = VoiceId) -> RegisteredVoice:
    return RegisteredVoice(**voice_object(await voices.get(caller, voice_id)))


@router.delete("/voices/{voice_id}", response_model=RegisteredVoice,
               summary="Delete one of your registered voices (its clip, transcript and codes)",
               responses={**ERRORS, **VOICE_NOT_FOUND})
async def delete_voice(caller: Submitter, voices: Voices, voice_id: str = VoiceId) -> RegisteredVoice:
    return RegisteredVoice(**{**voice_object(await voices.delete(caller, voice_id)), "deleted": True})
