"""The Faust side of the Kafka client config: :func:`voicenote.kafka.client_config` (aiokafka dialect) as
the ``broker_credentials`` Faust takes.

The settings are read and checked once, in voicenote/kafka/config.py, for both client stacks; this module only
changes the shape, so the workers and the confluent-kafka clients always carry the same security settings.
"""

from __future__ import annotations

import faust
from faust.types.auth import CredentialsT

from voicenote.kafka import client_config
from voicenote.settings import KafkaSettings


def faust_credentials(kafka: KafkaSettings) -> CredentialsT | None:
    """``broker_credentials`` for the Faust app; None on PLAINTEXT."""
    conf = client_config(kafka, "aiokafka")
    if conf["sasl_mechanism"] is not None:
        return faust.SASLCredentials(username=conf["sasl_plain_username"], password=conf["sasl_plain_password"],
                                     ssl_context=conf["ssl_context"], mechanism=conf["sasl_mechanism"])
    if conf["ssl_context"] is not None:
        return faust.SSLCredentials(conf["ssl_context"])
    return None
