"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import math
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from schemas.validation import (
    MAX_INPUT_CHARS,
    REPETITION_PENALTY_RANGE,
    SEED_RANGE,
    SPEED_RANGE,
    TEMPERATURE_RANGE,
    TOP_P_RANGE,
    Format,
    bad_characters,
    speakable,
)

BATCH_HARD_MAX = 1000  # the configured api.batch_max_items (default 100) is enforced below this


def _check_input(value: str) -> str:
    """Decided here, before anything is published: the error's type becomes the answer's ``code``."""
    if not value.strip():
        raise PydanticCustomError("empty_utterance", "input must contain text, not only whitespace")
    if not speakable(value):
        raise PydanticCustomError("empty_utterance", "input has nothing speakable: it needs at least one letter or digit "
                                                     "(punctuation, symbols and control characters alone cannot be spoken)")
    if (bad := bad_characters(value)) is not None:
        raise PydanticCustomError("invalid_characters", "input " + bad)
    return value


def _check_optional_text(value: str | None) -> str | None:
    if value is not None and (bad := bad_characters(value)) is not None:
        raise PydanticCustomError("invalid_characters", bad)
    return value


def _check_speed(value: Any) -> Any:
    """NaN and Infinity (Python's JSON parser accepts them) get this message rather than a range error."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value  # the float validator explains
    if isinstance(number, float) and not math.isfinite(number):
        raise PydanticCustomError("invalid_speed", "speed must be a finite number between {low} and {high}; got {got}",
                                  {"low": SPEED_RANGE[0], "high": SPEED_RANGE[1], "got": str(value)})
    return value


def _check_webhook(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("webhook_url must be an absolute http:// or https:// URL")
    return value


class Reference(BaseModel):
    """fish-speech's inline reference: a clip and what it says (docs/voices.md)."""

    model_config = ConfigDict(extra="forbid")

    audio: str = Field(..., description="The clip (wav, mp3, flac or ogg; 3-30 s) in standard base64.")
    text: str | None = Field(None, description="What the clip says, word for word (required).")


_REFERENCES_DESCRIPTION = ("fish-speech's inline references: [{\"audio\": base64, \"text\": str}], at most one, S1-mini models "
                           "only. The clip is stored as an ephemeral voice of the caller and used instead of voice "
                           "(docs/voices.md). An empty list is the same as none.")


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "tts-1", "input": "Your order has shipped.", "voice": "alloy", "response_format": "mp3"},
        {"model": "tts-1", "input": "Your report is ready.", "voice": "nova", "response_format": "wav", "speed": 1.2,
         "webhook_url": "https://example.com/hooks/voicenote"},
    ]})

    model: str = Field("tts-1", max_length=64, description="A model of GET /v1/models: tts-1, tts-1-hd and gpt-4o-mini-tts "
                                                          "(the CPU voice), s1-mini (OpenAudio S1-mini on the GPU workers).")
    input: str = Field(..., min_length=1, max_length=MAX_INPUT_CHARS, description="The text to speak, at most 4,096 characters.")
    voice: str = Field("alloy", max_length=64, description="An OpenAI voice name (alloy, ash, ballad, coral, echo, fable, nova, "
                                                           "onyx, sage, shimmer, verse, marin, cedar) or a voice of the model; "
                                                           "GET /v1/audio/voices lists them. A registered voice "
                                                           "(vc_..., POST /v1/audio/voices) with an S1-mini model.")
    response_format: Format = Field("mp3", description="Audio format of the result; pcm is raw 16-bit little-endian mono "
                                                       "at the voice's rate (the X-Sample-Rate header).")
    speed: float = Field(1.0, ge=SPEED_RANGE[0], le=SPEED_RANGE[1], description="Honoured by the CPU models; S1-mini ignores it.")
    instructions: str | None = Field(None, max_length=4096, description="No engine uses it yet; when set it is reported as "
                                                                        "ignored (X-Voicenote-Ignored-Params).")
    temperature: float | None = Field(None, ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1],
                                      description="S1-mini sampling temperature (0 is greedy); the engine's default when unset.")
    top_p: float | None = Field(None, gt=TOP_P_RANGE[0], le=TOP_P_RANGE[1], description="S1-mini nucleus sampling.")
    repetition_penalty: float | None = Field(None, gt=REPETITION_PENALTY_RANGE[0], le=REPETITION_PENALTY_RANGE[1],
                                             description="S1-mini repetition penalty over recent frames.")
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1], description="S1-mini sampling seed: same seed, same audio.")
    stream_format: Literal["audio", "sse", "none"] | None = Field(
        None, description="Unset or 'audio' (OpenAI's default): the audio streamed in chunks as segments are synthesized "
                          "(wav with an unknown-length header, pcm, or mp3/opus/aac/flac encoded as it goes); the whole "
                          "body is still a complete file. 'sse': OpenAI's speech stream events (speech.audio.delta with "
                          "base64 audio, then speech.audio.done). 'none': the whole file in one buffered answer, with a "
                          "Content-Length. Only POST /v1/audio/speech streams; the async endpoint ignores it.")
    webhook_url: str | None = Field(None, max_length=2048, description="Receives the completion (signed) when the job ends.")
    use_cache: bool = Field(True, description="False forces a fresh synthesis even if an identical request was answered before.")
    timestamps: Literal["word"] | None = Field(None, description="'word': also time every word of the input "
                                                               "(Piper models only), served by GET /v1/jobs/{id}/timestamps "
                                                               "and /captions?format=vtt|srt. Unset: none, as OpenAI.")
    references: list[Reference] | None = Field(None, description=_REFERENCES_DESCRIPTION)

    _webhook = field_validator("webhook_url")(_check_webhook)
    _input = field_validator("input")(_check_input)
    _instructions = field_validator("instructions")(_check_optional_text)
    _speed = field_validator("speed", mode="before")(_check_speed)


class OpenAISpeechRequest(SpeechRequest):
    """The body of ``POST /v1/audio/speech``: OpenAI's SDK sends whatever ``extra_body`` holds, and clients written
    for other servers send their own fields (Kokoro's ``lang_code``, fish-speech's ``chunk_length``). Unknown fields
    are accepted and named in ``X-Voicenote-Ignored-Params`` (``ModelRouter.route``), except those that look like a
    field of ours misspelt or in another spelling (``check_extra_fields``): ignoring those would silently drop what
    the caller meant. The native endpoints (``/async``, ``/batch``) keep refusing every unknown field."""

    model_config = ConfigDict(extra="allow")


class BatchItem(BaseModel):
    """One request of a batch; accepts both the OpenAI names (input, voice, response_format) and ours."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    input: str = Field(..., min_length=1, max_length=MAX_INPUT_CHARS, validation_alias=AliasChoices("input", "text"))
    voice: str = Field("alloy", max_length=64, validation_alias=AliasChoices("voice", "voice_id"))
    response_format: Format = Field("mp3", validation_alias=AliasChoices("response_format", "format"))
    model: str = Field("tts-1", max_length=64)
    speed: float = Field(1.0, ge=SPEED_RANGE[0], le=SPEED_RANGE[1])
    instructions: str | None = Field(None, max_length=4096)
    temperature: float | None = Field(None, ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1])
    top_p: float | None = Field(None, gt=TOP_P_RANGE[0], le=TOP_P_RANGE[1])
    repetition_penalty: float | None = Field(None, gt=REPETITION_PENALTY_RANGE[0], le=REPETITION_PENALTY_RANGE[1])
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    webhook_url: str | None = Field(None, max_length=2048)
    timestamps: Literal["word"] | None = None
    references: list[Reference] | None = Field(None, description=_REFERENCES_DESCRIPTION)

    _webhook = field_validator("webhook_url")(_check_webhook)
    _input = field_validator("input")(_check_input)
    _instructions = field_validator("instructions")(_check_optional_text)
    _speed = field_validator("speed", mode="before")(_check_speed)

    def as_speech(self, default_webhook: str | None) -> SpeechRequest:
        return SpeechRequest(model=self.model, input=self.input, voice=self.voice, response_format=self.response_format,
                             speed=self.speed, instructions=self.instructions, temperature=self.temperature, top_p=self.top_p,
                             repetition_penalty=self.repetition_penalty, seed=self.seed,
                             webhook_url=self.webhook_url or default_webhook, timestamps=self.timestamps,
                             references=self.references)


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"requests": [{"text": "Hello Ada.", "voice_id": "alloy", "format": "wav"},
                      {"input": "Hello Grace.", "voice": "nova", "response_format": "mp3"}],
         "webhook_url": "https://example.com/hooks/voicenote"},
    ]})

    requests: list[BatchItem] = Field(..., min_length=1, max_length=BATCH_HARD_MAX,
                                      description="The requests; at most api.batch_max_items (100 by default).")
    webhook_url: str | None = Field(None, max_length=2048, description="Default webhook for items that name none.")

    _webhook = field_validator("webhook_url")(_check_webhook)


class AsyncAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"job_id": "job_3fJq0d2w", "status_url": "http://127.0.0.1:8000/v1/jobs/job_3fJq0d2w", "estimated_seconds": 2.4}]})

    job_id: str
    status_url: str
    estimated_seconds: float = Field(..., description="(synthesis lag + 1) / measured jobs per second.")
    ignored_params: list[str] = Field(default_factory=list, description="Parameters set in the request that the model's "
                                                                        "engine does not use (also the X-Voicenote-Ignored-Params header).")


class BatchAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"batch_id": "batch_Zx81", "job_ids": ["job_a1", "job_b2"], "status_url": "http://127.0.0.1:8000/v1/batches/batch_Zx81",
         "estimated_seconds": 5.0}]})

    batch_id: str
    job_ids: list[str]
    status_url: str
    estimated_seconds: float
    ignored_params: dict[str, list[str]] = Field(default_factory=dict, description="Per job id, the parameters its model "
                                                                                   "ignores (jobs with none are left out).")


class BatchView(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"batch_id": "batch_Zx81", "created_at": 1732492800000, "total": 2, "counts": {"queued": 1, "succeeded": 1},
         "job_ids": ["job_a1", "job_b2"]}]})

    batch_id: str
    created_at: int
    total: int
    counts: dict[str, int]
    job_ids: list[str]


class JobError(BaseModel):
    code: str
    message: str


class WordTimestamp(BaseModel):
    word: str = Field(..., description="A whitespace-separated word of the input, as written (punctuation included).")
    start: float = Field(..., description="Seconds from the start of the audio.")
    end: float


class WordTimestamps(BaseModel):
    job_id: str
    words: list[WordTimestamp] = Field(..., description="Every spoken word of the input, in order; times never go back.")


class WebhookState(BaseModel):
    status: str  # retrying, delivered, failed (dead-lettered after the last attempt) or refused (address policy)
    attempts: int
    last_error: str | None = None


class JobView(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"job_id": "job_3fJq0d2w", "status": "succeeded", "audio_url": "http://127.0.0.1:8000/v1/jobs/job_3fJq0d2w/audio",
         "created_at": 1732492800000, "completed_at": 1732492801650,
         "timings": {"queued_ms": 40, "batch_wait_ms": 100, "engine_ms": 1400, "upload_ms": 12}},
        {"job_id": "job_9kLm", "status": "failed", "error": {"code": "engine_error", "message": "synthesis failed"},
         "created_at": 1732492800000, "completed_at": 1732492800900, "timings": {}}]})

    job_id: str
    status: str
    model: str | None = None
    ignored_params: list[str] | None = Field(None, description="Parameters of the request that the model's engine did not use.")
    audio_url: str | None = None
    error: JobError | None = None
    created_at: int | None = None
    completed_at: int | None = None
    timings: dict[str, int] = Field(default_factory=dict)
    webhook: WebhookState | None = None
    timestamps_url: str | None = Field(None, description="The job's word timestamps (asked for with timestamps: 'word').")
    captions_url: str | None = Field(None, description="The same as subtitles: add ?format=vtt or ?format=srt.")
    timestamps_unavailable: str | None = Field(None, description="Timestamps were asked for but there are none: why.")


class ModelCard(BaseModel):
    """One model, in OpenAI's shape (id, object, created, owned_by) plus what Voicenote knows of it."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "voicenote"
    aliases: list[str]
    engine: str
    family: str
    description: str
    sample_rate: int
    default_voice: str
    parameters: list[str] = Field(..., description="The optional parameters this model's engine uses.")
    ignored_parameters: dict[str, str] = Field(..., description="The ones it does not use, and why.")
    word_timestamps: bool = Field(False, description='Whether its engine times words (`"timestamps": "word"`); the '
                                                     "others answer 400 timestamps_unsupported.")


class ModelList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"object": "list", "data": [
        {"id": "tts-1", "object": "model", "created": 0, "owned_by": "voicenote", "aliases": [], "engine": "piper", "family": "piper",
         "description": "Piper en_US-joe-medium on the CPU.", "sample_rate": 22050, "default_voice": "en_US-joe-medium",
         "parameters": ["speed"], "ignored_parameters": {"seed": "Piper has no sampling"}}]}]})

    object: Literal["list"] = "list"
    data: list[ModelCard]


class VoiceInfo(BaseModel):
    id: str
    description: str


class RunningEngine(BaseModel):
    engine: str
    model_version: str
    sample_rate: int
    voices: list[str] = Field(..., description="The voice ids the running engine accepts.")
    seen_at: int = Field(..., description="When a worker last said so (epoch ms); adverts expire 90 s after the last one.")


class ModelVoices(BaseModel):
    model: str
    aliases: list[str]
    engine: str
    default_voice: str
    voices: list[VoiceInfo] = Field(..., description="The voices the model's engine serves (as configured; the API accepts these).")
    voice_names: dict[str, str] = Field(..., description="Every accepted name (OpenAI's included) and the voice it resolves to.")
    running: RunningEngine | None = Field(..., description="What the family's running workers advertise; null when none "
                                                           "has been seen lately (requests then wait on the topic).")


class RegisteredVoice(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"id": "vc_3f9a0c1d2e4b5a6978877665", "object": "voice", "name": "Ada", "transcript": "Hello, this is my voice.",
         "duration_s": 6.71, "created_at": 1732492800000, "ephemeral": False}]})

    id: str = Field(..., description="vc_ and 24 hex characters: send it as voice with model s1-mini.")
    object: Literal["voice"] = "voice"
    name: str = Field(..., description="Your label (empty when none was given).")
    transcript: str
    duration_s: float = Field(..., description="Of the stored clip (mono, 44.1 kHz).")
    created_at: int = Field(..., description="Epoch milliseconds.")
    ephemeral: bool = Field(False, description="Stored for one request's inline references; deleted after "
                                               "api.ephemeral_voice_ttl_seconds (never listed).")
    deleted: bool | None = Field(None, description="True in DELETE's answer.")


class VoiceList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"object": "list", "data": [
        {"model": "tts-1", "aliases": [], "engine": "piper", "default_voice": "en_US-joe-medium",
         "voices": [{"id": "en_US-joe-medium", "description": "Piper, US English, male, medium quality"}],
         "voice_names": {"alloy": "en_US-joe-medium", "en_US-joe-medium": "en_US-joe-medium"}}],
        "voices": ["en_US-joe-medium", "alloy"]}]})

    object: Literal["list"] = "list"
    data: list[ModelVoices]
    voices: list[str] = Field(..., description="Every name the listed models accept for voice, flat, as Kokoro-FastAPI "
                                               "answers (what third-party web UIs read): each model's voice ids and "
                                               "names in data's order, without repeats. A name may be accepted by only "
                                               "some models; data[].voice_names says which (or ask with ?model=).")
    registered: list[RegisteredVoice] = Field(default_factory=list, description="The caller's registered voices (never "
                                              "another key's); their ids also appear under the S1-mini models in data "
                                              "and in voices.")
