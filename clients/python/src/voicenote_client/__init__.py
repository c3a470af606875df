"""voicenote-client: publish Voicenote synthesis requests to Kafka and read their completions.

``VoicenoteClient`` (synchronous) and ``AsyncVoicenoteClient`` (asyncio) take a librdkafka
configuration dict and the deployment's topic prefix. Only confluent-kafka, fastavro and httpx are
needed; nothing of the server is imported.
"""

from voicenote_client.aio import AsyncVoicenoteClient
from voicenote_client.client import (
    TERMINAL,
    BrokerUnavailable,
    Completion,
    EventCodecs,
    InvalidRequest,
    JobTimeout,
    PublishError,
    Router,
    StockRouter,
    VoicenoteClient,
    VoicenoteClientError,
    new_job_id,
)
from voicenote_client.codec import Codecs, DecodeError, EncodeError, HttpSchemaRegistry

__version__ = "0.1.0"

__all__ = [
    "TERMINAL",
    "AsyncVoicenoteClient",
    "BrokerUnavailable",
    "Codecs",
    "Completion",
    "DecodeError",
    "EncodeError",
    "EventCodecs",
    "HttpSchemaRegistry",
    "InvalidRequest",
    "JobTimeout",
    "PublishError",
    "Router",
    "StockRouter",
    "VoicenoteClient",
    "VoicenoteClientError",
    "new_job_id",
]
