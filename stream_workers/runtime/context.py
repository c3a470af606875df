"""What the agents need, built once per worker process from settings and passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.codec import Codecs
from schemas.topics import TopicCatalog
from stream_workers.runtime.result_cache import ResultCache
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
    # Job records in Redis: completion writes the projection (queued, terminal states); synthesis writes
    # running and reads cancellations. docs/architecture.md, "Who writes what in Redis", has every writer.
    jobs: JobStore | None = None
    cache: ResultCache | None = None  # result cache: looked up by synthesis, recorded by storage
    # What the worker's Redis and storage calls are waiting on (they retry; see voicenote/retry.py).
    health: DependencyHealth = field(default_factory=DependencyHealth)
