"""Settings become client config: the one place that reads ``KafkaSettings`` for either client stack.

Every Kafka client of the project (confluent-kafka's Producer, Consumer and AdminClient in the API, the
webhook dispatcher, the operator tools and the client library; aiokafka's under Faust in the workers) takes
its connection and security settings from here, so a cluster that needs SASL or TLS is reachable by every
process or refused by all with the same message.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any, Literal

from voicenote.errors import ConfigError
from voicenote.settings import KafkaSettings

# What both stacks speak: aiokafka (the workers, through Faust) knows no other SASL mechanism.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# librdkafka's own lines (a refused connection, a purged queue at close) go through Python logging under this
# name, so ``VOICENOTE_LOG__FORMAT=json`` holds for every line a process writes; without a logger librdkafka
# prints its ``%3|1796701413.297|FAIL|...`` lines straight to stderr. confluent-kafka serves them from the
# client's poll(): a Producer's poll thread and a Consumer's consume() do; an AdminClient's wait for its poll().
LIBRDKAFKA_LOGGER = logging.getLogger("voicenote.kafka.librdkafka")


def client_config(kafka: KafkaSettings, stack: Literal["confluent", "aiokafka"] = "confluent") -> dict[str, Any]:
    """The connection and security settings of ``kafka`` in one client stack's dialect.

    ``confluent``: librdkafka properties (the API, the webhook dispatcher, ops tools). ``aiokafka``: the
    keyword arguments of aiokafka's clients (the Faust workers; see stream_workers/runtime/kafka_security.py).
    Both are resolved here from one reading of the settings, so a cluster that needs SASL or TLS is
    reachable by every process or refused by all with the same message, never by the API alone.
    """
    protocol = kafka.security_protocol
    sasl = protocol.startswith("SASL")
    mechanism = (kafka.sasl_mechanism or "PLAIN") if sasl else None
    password = kafka.sasl_password.get_secret_value() if kafka.sasl_password is not None else None
    if sasl:
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"kafka.sasl_mechanism {mechanism!r} is not one the workers speak: {sorted(SASL_MECHANISMS)}")
        if not kafka.sasl_username or password is None:
            raise ConfigError(f"kafka.security_protocol={protocol} needs kafka.sasl_username and kafka.sasl_password")
    tls = protocol.endswith("SSL")
    if stack == "confluent":
        # No client-metrics push (KIP-714): a broker without it (Tansu) is asked again every few seconds by every
        # client, a steady load on an idle stack (issue 24); the workers' metrics go through /metrics anyway.
        conf: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap_servers, "security.protocol": protocol,
                                "enable.metrics.push": False, "logger": LIBRDKAFKA_LOGGER}
        if sasl:
            conf.update({"sasl.mechanism": mechanism, "sasl.username": kafka.sasl_username, "sasl.password": password})
        if tls and kafka.ssl_ca_location:
            conf["ssl.ca.location"] = kafka.ssl_ca_location
        return conf
    return {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "sasl_plain_username": kafka.sasl_username if sasl else None,
        "sasl_plain_password": password if sasl else None,
        # Built here so a CA bundle that does not load stops start-up rather than the first connection.
        "ssl_context": ssl.create_default_context(cafile=kafka.ssl_ca_location) if tls else None,
    }

