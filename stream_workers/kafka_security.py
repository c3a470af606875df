"""The Faust (aiokafka) side of the Kafka security settings that every confluent-kafka client also reads.

One source, ``KafkaSettings``, for both client libraries: a cluster that needs SASL or TLS must not be
reachable by the API's producer but not by the workers' consumers.
"""

from __future__ import annotations

import ssl

import faust
from faust.types.auth import CredentialsT

from voicenote.errors import ConfigError
from voicenote.settings import KafkaSettings

_SASL_MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}


def faust_credentials(kafka: KafkaSettings) -> CredentialsT | None:
    """``broker_credentials`` for the Faust app; None on PLAINTEXT."""
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context(cafile=kafka.ssl_ca_location) if protocol.endswith("SSL") else None
    if not protocol.startswith("SASL"):
        return faust.SSLCredentials(context)
    mechanism = kafka.sasl_mechanism or "PLAIN"
    if mechanism not in _SASL_MECHANISMS:
        raise ConfigError(f"kafka.sasl_mechanism {mechanism!r} is not one the workers speak: {sorted(_SASL_MECHANISMS)}")
    if not kafka.sasl_username or kafka.sasl_password is None:
        raise ConfigError(f"kafka.security_protocol={protocol} needs kafka.sasl_username and kafka.sasl_password")
    return faust.SASLCredentials(username=kafka.sasl_username, password=kafka.sasl_password.get_secret_value(),
                                 ssl_context=context, mechanism=mechanism)
