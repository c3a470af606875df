"""Job submission and status routes."""

from __future__ import annotations

from fastapi import APIRouter, Path
from fastapi.responses import RedirectResponse, Response

from producer_api.deps import Jobs
from producer_api.models import AsyncAccepted, JobView, SpeechRequest

router = APIRouter(prefix="/v1")
JobId = Path(..., pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The job id returned at submission.")


@router.post("/audio/speech/async", status_code=202, response_model=AsyncAccepted, summary="Queue a voice note")
async def submit_async(body: SpeechRequest, jobs: Jobs) -> AsyncAccepted:
    job_id, estimate = await jobs.submit(body)
    return AsyncAccepted(job_id=job_id, status_url=jobs.status_url(job_id), estimated_seconds=estimate)


@router.get("/jobs/{job_id}", response_model=JobView, response_model_exclude_none=True, summary="Job status")
async def get_job(jobs: Jobs, job_id: str = JobId) -> JobView:
    return await jobs.view(job_id)


@router.get("/jobs/{job_id}/audio", summary="The job's audio (a redirect to storage, or the bytes)",
            responses={200: {"content": {"audio/wav": {}}}, 307: {"description": "Presigned storage URL"}})
async def get_audio(jobs: Jobs, job_id: str = JobId) -> Response:
    url, data, content_type = await jobs.audio(job_id)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    return Response(content=data, media_type=content_type)
