"""Job status, cancellation, audio, and batch status routes."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import RedirectResponse, Response

from producer_api.deps import AudioFiles, BatchService, Cancelling, Queries, Reader
from producer_api.models import BatchView, JobView, WordTimestamp, WordTimestamps
from producer_api.routes.examples import ERRORS, NO_TIMESTAMPS, NOT_CANCELLABLE, NOT_FOUND
from schemas.validation import JOB_ID
from voicenote import captions

router = APIRouter(prefix="/v1", tags=["jobs"])
JobId = Path(..., pattern=JOB_ID.pattern, description="The job id returned at submission.")
BatchId = Path(..., pattern=JOB_ID.pattern, description="The batch id returned at submission.")


@router.get("/jobs/{job_id}", response_model=JobView, response_model_exclude_none=True, summary="Job status",
            responses={**ERRORS, **NOT_FOUND})
async def get_job(caller: Reader, queries: Queries, job_id: str = JobId) -> JobView:
    return await queries.view(caller, job_id)


@router.delete("/jobs/{job_id}", response_model=JobView, response_model_exclude_none=True,
               summary="Cancel a job that has not started (it ends cancelled)", responses={**ERRORS, **NOT_FOUND, **NOT_CANCELLABLE})
async def cancel_job(caller: Reader, cancellation: Cancelling, job_id: str = JobId) -> JobView:
    return await cancellation.cancel(caller, job_id)


@router.get("/jobs/{job_id}/audio", summary="The job's audio (a redirect to storage, or the bytes)",
            responses={200: {"content": {"audio/mpeg": {"example": "(binary audio)"}}},
                       307: {"description": "Presigned storage URL"}, **ERRORS, **NOT_FOUND})
async def get_audio(caller: Reader, audio_files: AudioFiles, job_id: str = JobId) -> Response:
    url, audio = await audio_files.fetch(caller, job_id)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    assert audio is not None
    return Response(content=audio.data, media_type=audio.content_type, headers=audio.headers)


@router.get("/jobs/{job_id}/timestamps", response_model=WordTimestamps, summary="The job's word timestamps",
            responses={**ERRORS, **NOT_FOUND, **NO_TIMESTAMPS})
async def get_timestamps(caller: Reader, audio_files: AudioFiles, job_id: str = JobId) -> WordTimestamps:
    words = await audio_files.timestamps(caller, job_id)
    return WordTimestamps(job_id=job_id, words=[WordTimestamp(word=w.word, start=round(w.start, 3), end=round(w.end, 3))
                                                for w in words])


@router.get("/jobs/{job_id}/captions", summary="The job's word timestamps as subtitles (WebVTT or SRT)",
            responses={200: {"content": {"text/vtt": {"example": "WEBVTT\n\n1\n00:00:00.046 --> 00:00:01.509\nHello, world!\n"},
                                         "application/x-subrip": {"example": "1\n00:00:00,046 --> 00:00:01,509\nHello, world!\n"}}},
                       **ERRORS, **NOT_FOUND, **NO_TIMESTAMPS})
async def get_captions(caller: Reader, audio_files: AudioFiles, job_id: str = JobId,
                       format: Literal["vtt", "srt"] = Query("vtt", description="vtt (WebVTT) or srt (SubRip).")) -> Response:  # noqa: A002
    words = await audio_files.timestamps(caller, job_id)
    text = captions.to_vtt(words) if format == "vtt" else captions.to_srt(words)
    return Response(content=text, media_type=captions.CAPTION_CONTENT_TYPES[format],
                    headers={"Content-Disposition": f'inline; filename="{job_id}.{format}"'})


@router.get("/batches/{batch_id}", response_model=BatchView, summary="Batch status: counts by job status, and the job ids",
            responses={**ERRORS, **NOT_FOUND})
async def get_batch(caller: Reader, batches: BatchService, batch_id: str = BatchId) -> BatchView:
    return await batches.view(caller, batch_id)
