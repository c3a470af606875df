"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.validation import MAX_INPUT_CHARS, SPEED_RANGE

Format = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"model": "tts-1", "input": "Your order has shipped.", "voice": "alloy", "response_format": "wav"}]})

    model: str = Field("tts-1", description="Model name; tts-1, tts-1-hd and gpt-4o-mini-tts map to the configured engine.")
    input: str = Field(..., min_length=1, max_length=MAX_INPUT_CHARS, description="The text to speak.")
    voice: str = Field("default", description="Voice name (OpenAI names are mapped to installed voices).")
    response_format: Format = Field("wav", description="Audio format of the result.")
    speed: float = Field(1.0, ge=SPEED_RANGE[0], le=SPEED_RANGE[1])
    instructions: str | None = Field(None, max_length=4096)
    webhook_url: str | None = Field(None, max_length=2048)
    use_cache: bool = Field(True, description="False forces a fresh synthesis even if an identical request was answered before.")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url_is_callable(cls, url: str | None) -> str | None:
        # Scheme and IP-literal checks only (no DNS here); allow-listed hosts are judged by the dispatcher.
        from stream_workers.webhooks.policy import precheck

        problem = precheck(url) if url else None
        if problem and "allow-lists" not in problem:
            raise ValueError(problem)
        return url


class AsyncAccepted(BaseModel):
    job_id: str
    status_url: str
    estimated_seconds: float


class JobError(BaseModel):
    code: str
    message: str


class WebhookState(BaseModel):
    status: str  # retrying, delivered, failed (dead-lettered after the last attempt) or refused (address policy)
    attempts: int
    last_error: str | None = None


class JobView(BaseModel):
    job_id: str
    status: str
    audio_url: str | None = None
    error: JobError | None = None
    created_at: int | None = None
    completed_at: int | None = None
    timings: dict[str, int] = Field(default_factory=dict)
    webhook: WebhookState | None = None
