"""Submission routes: OpenAI-compatible synchronous speech, asynchronous jobs and batches."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from producer_api.deps import BatchService, IdempotencyKey, Segments, Speaking, Submitter, Submitting
from producer_api.models import AsyncAccepted, BatchAccepted, BatchRequest, OpenAISpeechRequest, SpeechRequest
from producer_api.routes.examples import CONFLICT_IDEMPOTENCY, ERRORS, TIMEOUT, Responses
from producer_api.services.common import ignored_header
from producer_api.services.streaming import open_stream
from producer_api.streaming import router_reading
from voicenote.audio import CONTENT_TYPES
from voicenote.errors import DependencyUnavailable

router = APIRouter(prefix="/v1/audio", tags=["speech"])

_AUDIO: Responses = {200: {"description": "The audio, in chunks as it is synthesized (stream_format unset or 'audio', as OpenAI "
                               "streams; the whole body is a complete file), as speech.audio.delta events then "
                               "speech.audio.done (stream_format 'sse'), or in one buffered answer with a Content-Length "
                               "(stream_format 'none'). pcm answers carry X-Sample-Rate, X-Channels and X-Sample-Format",
                "content": {**{ct: {"example": "(binary audio)"} for ct in CONTENT_TYPES.values()},
                            "text/event-stream": {"example": 'data: {"type":"speech.audio.delta","audio":"..."}'}}}}


@router.post("/speech", response_class=Response, summary="Speak now (OpenAI-compatible): answers with the audio",
             responses={**_AUDIO, **ERRORS, **CONFLICT_IDEMPOTENCY, **TIMEOUT})
async def speech(body: OpenAISpeechRequest, caller: Submitter, sync: Speaking, segments: Segments,
                 idempotency_key: IdempotencyKey = None) -> Response:
    if body.stream_format is None:
        # OpenAI's default: stream. Where this process cannot (no segments topic, or not reading it after a
        # moment's wait), the answer is the whole file: the caller asked for nothing in particular, and gets a
        # complete answer rather than a 503.
        if segments is not None and await router_reading(segments):
            return await open_stream(sync, segments, caller, body, idempotency_key)
    elif body.stream_format != "none":
        if segments is None:
            raise DependencyUnavailable("kafka", "streaming needs the segments topic in the catalog")
        return await open_stream(sync, segments, caller, body, idempotency_key)
    audio = await sync.speak(caller, body, idempotency_key)
    return Response(content=audio.data, media_type=audio.content_type, headers={**audio.headers, "X-Voicenote-Streamed": "false"})


@router.post("/speech/async", status_code=202, response_model=AsyncAccepted, summary="Queue a voice note",
             responses={**ERRORS, **CONFLICT_IDEMPOTENCY})
async def speech_async(body: SpeechRequest, caller: Submitter, submission: Submitting, response: Response,
                       idempotency_key: IdempotencyKey = None) -> AsyncAccepted:
    accepted = await submission.submit_async(caller, body, idempotency_key)
    response.headers.update(ignored_header(accepted.ignored_params))
    return accepted


@router.post("/speech/batch", status_code=202, response_model=BatchAccepted, summary="Queue many voice notes at once",
             responses={**ERRORS, **CONFLICT_IDEMPOTENCY})
async def speech_batch(body: BatchRequest, caller: Submitter, batches: BatchService, response: Response,
                       idempotency_key: IdempotencyKey = None) -> BatchAccepted:
    accepted = await batches.submit(caller, body, idempotency_key)
    # The union over the batch; the body and each job's record say which job ignores what.
    response.headers.update(ignored_header(sorted({p for params in accepted.ignored_params.values() for p in params})))
    return accepted
