"""The event codec, built from settings: how every process of one deployment writes and reads the wire events.

The framing itself lives in :mod:`schemas.codec` (``AvroCodec.decode`` reads both: the Confluent framing,
``00`` + 4-byte big-endian schema id, and Avro single-object encoding, ``C3 01`` + 8-byte CRC-64-AVRO
fingerprint). What a reader also needs is the deployment's schema registry: without it a registry-framed
record cannot be read (``DecodeError: Confluent-framed event ... no schema registry is configured``). So
every reader and writer takes its codecs from :func:`event_codecs`: the API, the workers, the operator
CLI (``replay``, ``dlq redrive``, ``watch``, ``projection rebuild``) and :class:`voicenote.client.VoicenoteClient`.
With ``kafka.schema_registry_url`` set they write the Confluent framing and read both; without it they
write single-object encoding and read both (a registry-framed record then fails as ``unknown_schema``).
"""

from __future__ import annotations

from schemas.codec import Codecs
from schemas.registry import HttpSchemaRegistry, SchemaRegistry
from voicenote.settings import KafkaSettings


def schema_registry(kafka: KafkaSettings) -> SchemaRegistry | None:
    """The schema registry ``kafka.schema_registry_url`` names, or None when there is none."""
    return HttpSchemaRegistry(kafka.schema_registry_url) if kafka.schema_registry_url else None


def event_codecs(kafka: KafkaSettings, *, registry: SchemaRegistry | None = None) -> Codecs:
    """One codec per event type, sharing the registry the settings name (``registry`` replaces it, for tests)."""
    return Codecs(registry if registry is not None else schema_registry(kafka))
