"""Settings per component, read from the environment (``VOICENOTE_<SECTION>__<FIELD>``).

Built once in each entrypoint and passed down; nothing reads the environment at import time. The
defaults are the embedded default (a broker and Redis on loopback, local-filesystem storage).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topics import REQUEST_FAMILIES, TopicCatalog, build_catalog


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field("", description="Prepended to every topic name (tests, tenants).")
    request_partitions: int = Field(24, ge=1)
    partitions: int = Field(12, ge=1, description="Partitions of the other topics.")
    schema_registry_url: str | None = Field(None, description="Confluent-compatible registry; none means single-object encoding.")
    security_protocol: str = Field("PLAINTEXT", pattern=r"^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$")
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = Field(None, description="CA bundle for SSL/SASL_SSL; none means the system's trust store.")
    # Short timeouts suit the embedded broker (Tansu holds a JoinGroup for half the session timeout);
    # production Kafka keeps normal ones.
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    fetch_max_wait_ms: int = Field(10, description="Tansu re-reads a parked fetch's partitions within this wait (after half "
                                   "of it, then half of what is left), so it adds up to about half of it to every consumer "
                                   "hop (docs/architecture.md); Kafka answers when data arrives.")
    fetch_idle_wait_ms: int = Field(0, ge=0, description="The Faust workers' fetch wait once no record has come "
                                           "for fetch_idle_after_seconds (stream_workers/runtime/fetch_wait.py): fewer "
                                           "fetches for Tansu to answer while idle, and up to half this wait more on the "
                                           "first hop after a quiet spell. 0: the wait never changes (Kafka).")
    fetch_idle_after_seconds: float = Field(10.0, gt=0, description="No record this long: a worker fetches with "
                                            "fetch_idle_wait_ms.")
    worker_linger_ms: int = Field(0, ge=0, description="How long the workers' producers wait to fill a produce request.")
    delivery_timeout_ms: int = Field(10_000, ge=1, description="The API's producer: a request fails fast (503) when the broker is away.")
    worker_delivery_timeout_ms: int = Field(120_000, ge=1, description="The webhooks worker's producer: it waits out a broker "
                                            "outage (a 10 s kill -9 on a busy machine took longer than 10 s) instead of exiting.")

    def catalog(self) -> TopicCatalog:
        """The topic catalog these settings name (prefix and partition counts)."""
        return build_catalog(prefix=self.topic_prefix, request_partitions=self.request_partitions, partitions=self.partitions)


class RedisSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "vn:"
    job_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    # One pool per client (voicenote.jobstore.redis_client): a call finding every connection busy waits for one,
    # up to pool_timeout_seconds, instead of failing at once (issue 25, defect 3: false 503s under a burst).
    max_connections: int = Field(100, ge=1, description="Connections per Redis client (per process); more calls wait.")
    pool_timeout_seconds: float = Field(5.0, gt=0, description="How long a call waits for a free connection before "
                                        "it fails (as Redis unavailable).")


class StorageBackend(str, Enum):
    local = "local"
    s3 = "s3"


class StorageSettings(BaseModel):
    backend: StorageBackend = StorageBackend.local
    local_dir: Path = Path("var/audio")
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = Field(
        None, description="The endpoint presigned URLs name, where clients reach S3 by another address than the services "
        "(compose: http://localhost:9000 while the services use http://minio:9000); none: s3_endpoint_url.")
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    key_prefix: str = "audio/"
    presign_expiry_seconds: int = 3600
    claim_check_bytes: int = Field(256 * 1024, description="Audio above this rides as a storage reference, not inline.")
    multipart_threshold_bytes: int = Field(16 * 1_048_576, ge=5 * 1_048_576, description="S3 uploads above this go multipart.")
    multipart_part_bytes: int = Field(8 * 1_048_576, ge=5 * 1_048_576, description="S3 multipart part size (S3's minimum is 5 MiB).")
    s3_max_attempts: int = Field(5, ge=1, description="Attempts per S3 call; adaptive backoff on throttling and 5xx.")
    lifecycle_days: int = Field(7, ge=1, description="Audio expires this long after upload (S3 lifecycle rule; local sweep).")

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> StorageSettings:
        if self.backend is StorageBackend.s3 and not self.s3_bucket:
            raise ValueError("storage.backend=s3 needs storage.s3_bucket (VOICENOTE_STORAGE__S3_BUCKET)")
        return self


class EngineKind(str, Enum):
    piper = "piper"
    s1mini = "s1mini"
    null = "null"  # zero-cost engine for pipeline benchmarks: a short tone, no model


class EngineSettings(BaseModel):
    kind: EngineKind = EngineKind.piper
    threads: int = Field(2, ge=1)
    s1mini_checkpoint_dir: Path | None = Field(None, description="Local openaudio-s1-mini directory; nothing is downloaded.")
    s1mini_device: str = "cpu"
    s1mini_dtype: str = Field("auto", description="auto: bfloat16 on CUDA, float32 on CPU.")
    s1mini_max_new_tokens: int = Field(1024, ge=1, description="Per item; about 47 s of audio.")
    s1mini_on_max_tokens: Literal["error", "truncate"] = Field(
        "error", description="An item that reaches max_new_tokens without ending: fail it, or keep the audio made so far.")
    s1mini_compile: bool | None = Field(
        None, description="torch.compile(fullgraph=True) the decode step before graph capture; unset: on CUDA, off on the CPU.")
    s1mini_compile_cache_dir: Path | None = Field(
        Path("var/torch-inductor"), description="Inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR, unless set): "
        "a restarted worker reuses its compiled kernels. Mount a volume here on GPU pods.")
    s1mini_slots: int | None = Field(None, ge=1, le=64, description="Rows decoding at once (batch buckets 1, 2, 4 .. slots); "
                                     "unset: 64 on CUDA, 8 on the CPU.")
    s1mini_kv_capacity: int = Field(2048, ge=64, description="KV-cache columns per slot (prompt + frames).")
    s1mini_prefill_tokens: int = Field(8192, ge=256, description="Padded prompt tokens per batched prefill.")
    s1mini_cuda_graphs: bool = Field(True, description="On CUDA, capture the decode step per (batch, KV) bucket at start.")
    s1mini_codec_dtype: Literal["float32", "bfloat16", "bf16-autocast"] = Field(
        "float32", description="bfloat16 / bf16-autocast (Snake in fp32): see docs/s1mini.md for the error vs fp32.")
    s1mini_codec_process: Literal["auto", "thread", "process"] = Field(
        "auto", description="Where the codec runs: auto = a child process on the CPU (out of the decode loop's GIL), "
        "a thread with its own CUDA stream on CUDA.")
    s1mini_codec_compile: bool = Field(False, description="torch.compile the codec on padded length buckets (CUDA).")
    s1mini_voices_dir: Path | None = Field(None, description="Registered reference voices.")
    s1mini_voice_cache_size: int = Field(32, ge=1, description="Voices kept in memory per worker (LRU), for each source: "
                                         "voices_dir, and registered vc_ voices from the audio store.")
    s1mini_voice_ttl_seconds: float = Field(60.0, ge=0, description="A registered voice is re-checked in the audio "
                                            "store after this long: a deleted voice is served for at most this.")
    piper_batched: bool = Field(False, description="Piper as one padded run per batch (the GPU path, CUDA provider when present).")
    null_batch_seconds: float = Field(0.0, ge=0, description="null engine: simulated cost per batch (fault tests).")
    null_fail_marker: str | None = Field(None, description="null engine: items whose text contains this fail.")


class ModelSettings(BaseModel):
    """Which model families this deployment serves (voicenote/models.py holds the models themselves)."""

    families: list[str] = Field(default_factory=lambda: list(REQUEST_FAMILIES),
                                description="Model families the API routes to; a model of another family gets a 400.")
    s1mini_voices: list[str] = Field(default_factory=list, description="S1-mini reference voices the GPU workers serve, "
                                     "besides 'default' and those found in engine.s1mini_voices_dir.")

    @model_validator(mode="after")
    def _known_families(self) -> ModelSettings:
        unknown = sorted(set(self.families) - set(REQUEST_FAMILIES))
        if unknown or not self.families:
            raise ValueError(f"models.families must name some of {', '.join(REQUEST_FAMILIES)}; got {self.families}")
        return self


class WorkerSettings(BaseModel):
    group_id: str = "voicenote"
    max_batch: int = Field(8, ge=1, le=64)
    window_seconds: float = Field(0.1, gt=0)
    batch_lookahead: int = Field(64, ge=1, description="A batch is chosen from this many of the oldest waiting items (>= max_batch).")
    bulk_delay_seconds: float = Field(1.0, ge=0, description="When slots are scarce, a bulk request yields to interactive "
                                      "ones that arrived up to this much after it (no starvation).")
    web_host: str = Field("127.0.0.1", description="Where the worker serves /metrics, /healthz, /readyz; 0.0.0.0 in containers.")
    web_port: int = Field(6066, description="Web port (metrics and probes); one per worker process.")
    commit_interval_seconds: float = 1.0
    retry_base_seconds: float = Field(0.2, gt=0, description="Redis/storage down: first wait before trying again; doubles per try.")
    retry_max_seconds: float = Field(5.0, gt=0, description="Redis/storage down: longest wait between tries (workers never give up).")
    projection_check_seconds: float = Field(5.0, gt=0, description="How often the completion worker checks that Redis still "
                                                                   "holds the projection (and rebuilds it if not).")
    stuck_after_seconds: float = Field(7200.0, gt=0, description="A job without a completion this long after submission is "
                                                                 "ended as failed (stuck_timeout) by the watchdog.")
    watchdog_interval_seconds: float = Field(60.0, gt=0, description="How often the completion worker looks for stuck jobs.")
    early_check_factor: float = Field(5.0, gt=0, description="A job queued or running longer than its estimated_seconds "
                                      "times this (and early_check_floor_seconds) is re-examined against the topics "
                                      "(stream_workers/completion/early_check.py).")
    early_check_floor_seconds: float = Field(120.0, gt=0, description="No job is re-examined as overdue sooner than this "
                                             "after its submission (also the bound of a job without an estimate).")
    broker_check_seconds: float = Field(5.0, gt=0, description="How often a worker asks the broker for metadata; two misses "
                                                               "in a row make its /readyz say it waits on kafka.")
    # Readiness that watches progress (docs/reliability.md, issue 22): bounds derived from the session timeout
    # unless set (Settings.progress_bounds).
    progress_check_seconds: float = Field(5.0, gt=0, description="How often a worker reads its group's committed offsets "
                                                                 "and the partitions' ends, to see whether it progresses.")
    progress_idle_check_seconds: float | None = Field(None, gt=0, description="While the worker has fetched no record "
                                                      "for kafka.fetch_idle_after_seconds and its last read found nothing "
                                                      "behind, it reads only this often (a stall starting then is seen "
                                                      "that much later). Unset: every progress_check_seconds.")
    stall_seconds: float | None = Field(None, gt=0, description="Partitions with lag and no committed offset moving this "
                                        "long: /readyz says it waits on progress. Unset: 3 x kafka.session_timeout_ms.")
    stall_exit_seconds: float | None = Field(None, gt=0, description="Stalled this long (broker answering, nothing else "
                                             "waited on): the worker exits (code 75) to be restarted. Unset: 10 x stall_seconds.")


class ApiKey(BaseModel):
    """One API key, stored as the SHA-256 of the token (``producer_api.auth.new_token()`` makes a pair)."""

    name: str = Field(..., min_length=1, max_length=64)
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    scopes: list[str] = Field(default_factory=lambda: ["speech", "jobs"], description="speech: submit; jobs: read and cancel; admin: read every job, ownerless ones too.")
    rate_per_second: float | None = Field(None, gt=0, description="Overrides api.rate_per_second for this key.")
    burst: int | None = Field(None, ge=1)


class SynthesisSettings(BaseModel):
    """The synthesis role (batch size and window are ``worker.max_batch`` / ``worker.window_seconds``)."""

    max_segment_chars: int = Field(300, ge=20, description="Long inputs are cut at sentence boundaries into segments this long.")
    stream_first_segment_chars: int = Field(80, ge=20, description="A streaming job's first segment is at most this long, "
                                                                    "so its first audio is ready sooner.")
    intake_size: int = Field(512, ge=1, description="Requests read ahead of the engine (admitted, waiting for a batch).")
    shutdown_grace_seconds: float = Field(20.0, gt=0, description="SIGTERM: finish the batch, publish, commit, exit within this.")
    lag_interval_seconds: float = Field(5.0, gt=0, description="How often consumer lag is sampled for the metrics.")


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str = "http://127.0.0.1:8000"
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve /metrics on this port (same host), "
                                     "and not on the API's own; unset: /metrics on the API's port.")
    keys: list[ApiKey] = Field(default_factory=list, description="Accepted Bearer tokens, hashed (JSON list in the env).")
    allow_anonymous: bool = Field(False, description="Serve without keys; only the embedded default sets this, explicitly.")
    rate_per_second: float = Field(50.0, gt=0, description="Token-bucket refill per key (per client address when anonymous).")
    rate_burst: int = Field(100, ge=1)
    max_body_bytes: int = Field(2 * 1_048_576, ge=1024)
    voice_upload_max_bytes: int = Field(10 * 1_048_576, ge=1024, description="POST /v1/audio/voices: the largest upload "
                                        "(clip and form fields); larger is refused with 400 clip_too_large, unread.")
    ephemeral_voice_ttl_seconds: int = Field(24 * 3600, ge=60, description="Voices stored for one request's inline "
                                             "references are deleted this long after they were stored (docs/voices.md).")
    ephemeral_voice_sweep_seconds: float = Field(3600.0, gt=0, description="How often each API process sweeps them.")
    batch_max_items: int = Field(100, ge=1, le=1000)
    sync_timeout_seconds: float = Field(60.0, gt=0, description="POST /v1/audio/speech answers 504 with the job id after this.")
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=60)
    estimate_refresh_seconds: float = Field(2.0, gt=0, description="How often the synthesis lag is sampled.")
    estimate_idle_refresh_seconds: float | None = Field(None, gt=0, description="While the lag is 0 and unchanged and no "
                                                        "request asks for an estimate, it is sampled only this often "
                                                        "(a submission wakes it). Unset: every estimate_refresh_seconds.")
    ready_requires_workers: bool = Field(False, description="/readyz waits until the synthesis group of each served "
                                         "family and the completion group have a member. Off by default (Kubernetes: "
                                         "workers scaled from zero must not take the API out of its Service); "
                                         "voicenote run turns it on.")
    ready_workers_check_seconds: float = Field(3.0, gt=0, description="How often (per API process) the worker groups "
                                               "are described, when api.ready_requires_workers is on.")
    estimate_prior_jobs_per_second: float = Field(1.0, gt=0, description="Throughput assumed until one is measured.")


# Retry delays: 5 s, 5 min, 30 min, 2 h, then 8 h three times (26.6 h after the first attempt). The
# tail repeats one delay because retries from the fifth on share the last retry topic
# (schemas.topics.WEBHOOK_RETRY_TIERS), where a partition's head must be the next record due.
DEFAULT_WEBHOOK_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 28800.0, 28800.0, 28800.0)


class WebhookSettings(BaseModel):
    signing_secret: SecretStr | None = Field(None, description="Standard Webhooks secret, whsec_<base64>; required to deliver.")
    timeout_seconds: float = Field(10.0, gt=0, description="Per attempt: connect, send and read the answer.")
    retry_schedule_seconds: list[float] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_SCHEDULE),
        description="Delay before each retry, in order (about a day in all, like Standard Webhooks and Svix); "
                    "attempts = 1 + its length. Empty: exponential backoff with the settings below.")
    max_attempts: int | None = Field(None, ge=1, le=50, description="Caps the attempts; default: 1 + len(retry_schedule_seconds), "
                                                                     "or 8 with exponential backoff.")
    backoff_base_seconds: float = Field(5.0, gt=0, description="Exponential mode: delay before the first retry; doubles per attempt.")
    backoff_max_seconds: float = Field(3600.0, gt=0)
    jitter: float = Field(0.2, ge=0, le=1, description="Each delay is drawn from [d*(1-jitter), d].")
    allow_hosts: list[str] = Field(default_factory=list, description="Hosts or CIDRs delivered to even if private/loopback.")
    max_redirects: int = Field(3, ge=0)
    poll_seconds: float = Field(0.5, gt=0, description="Longest wait in the dispatcher loop while retries are not due.")
    fetch_max_wait_ms: int = Field(0, ge=0, description="The dispatcher's fetch wait; 0: kafka.fetch_max_wait_ms. On Tansu "
                                   "a delivery starts up to about half of it later (the one-machine stack sets 1000).")

    @field_validator("retry_schedule_seconds")
    @classmethod
    def _positive_delays(cls, value: list[float]) -> list[float]:
        if any(not d > 0 for d in value):
            raise ValueError("every retry delay must be a positive number of seconds")
        return value

    @property
    def attempts(self) -> int:
        """Deliveries tried in all (the first one and every retry)."""
        if self.max_attempts is not None:
            return self.max_attempts
        return 1 + len(self.retry_schedule_seconds) if self.retry_schedule_seconds else 8


class CacheSettings(BaseModel):
    enabled: bool = True
    ttl_seconds: int = Field(6 * 24 * 3600, ge=60, description="Keep below storage.lifecycle_days so a hit never points at expired audio.")


class LogSettings(BaseModel):
    format: str = Field("text", pattern=r"^(text|json)$", description="json: one object a line with job_id (voicenote/logs.py).")
    level: str = "INFO"


class TracingSettings(BaseModel):
    exporter: str | None = Field(None, pattern=r"^(none|console|file|otlp)$", description=(
        "OpenTelemetry spans (voicenote/tracing.py). Unset: otlp when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set, "
        "else none. otlp is configured by the SDK's own OTEL_* variables."))
    file: Path | None = Field(None, description="exporter=file: spans appended here as JSON lines.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOICENOTE_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    storage: StorageSettings = StorageSettings()
    engine: EngineSettings = EngineSettings()
    models: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    synthesis: SynthesisSettings = SynthesisSettings()
    api: ApiSettings = ApiSettings()
    webhooks: WebhookSettings = WebhookSettings()
    cache: CacheSettings = CacheSettings()
    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()

    def progress_bounds(self) -> tuple[float, float]:
        """(stall, exit) seconds of the progress watch: ``worker.stall_seconds`` (default 3 x the Kafka session
        timeout) and ``worker.stall_exit_seconds`` (default 10 x the stall bound)."""
        stall = self.worker.stall_seconds or 3 * self.kafka.session_timeout_ms / 1000
        return stall, self.worker.stall_exit_seconds or 10 * stall

    @model_validator(mode="after")
    def _exit_after_stall(self) -> Settings:
        stall, leave = self.progress_bounds()
        if leave <= stall:
            raise ValueError(f"worker.stall_exit_seconds ({leave:g}) must be longer than worker.stall_seconds ({stall:g})")
        return self


def to_env(settings: Settings) -> dict[str, str]:
    """The ``VOICENOTE_*`` environment that rebuilds ``settings`` in a child process."""
    env: dict[str, str] = {}
    for section, values in settings.model_dump(mode="json").items():
        for name, value in values.items():
            if value is None:
                continue
            if isinstance(values, dict) and name in _SECRETS:
                value = getattr(getattr(settings, section), name).get_secret_value()
            if isinstance(value, (list, dict)):
                value = json.dumps(value)  # pydantic-settings reads complex fields as JSON
            env[f"VOICENOTE_{section.upper()}__{name.upper()}"] = str(value)
    return env


_SECRETS = {"sasl_password", "s3_access_key_id", "s3_secret_access_key", "signing_secret"}
