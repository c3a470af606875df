"""What the agents need, built once per worker process from settings and passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.codec import Codecs
from schemas.topics import TopicCatalog
from stream_workers.result_cache import ResultCache
from voicenote.jobstore import JobStore
from voicenote.retry import DependencyHealth
from voicenote.settings import Settings
from voicenote.storage import AudioStore


@dataclass
class WorkerContext:
    settings: Settings
    codecs: Codecs
    catalog: TopicCatalog
    store: AudioStore
    jobs: JobStore | None = None  # only the completion role writes the status projection
    cache: ResultCache | None = None  # result cache: looked up by synthesis, recorded by storage
    # What the worker's Redis and storage calls are waiting on (they retry; see voicenote/retry.py).
    health: DependencyHealth = field(default_factory=DependencyHealth)
