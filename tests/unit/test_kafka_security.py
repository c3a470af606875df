"""Faust and confluent-kafka clients read the same Kafka security settings."""

from __future__ import annotations

import faust
import pytest

from stream_workers.runtime.kafka_security import faust_credentials
from voicenote.errors import ConfigError
from voicenote.kafka import client_config
from voicenote.settings import KafkaSettings


def test_plaintext_needs_no_credentials() -> None:
    assert faust_credentials(KafkaSettings()) is None


def test_sasl_ssl_gives_faust_the_same_user_mechanism_and_tls_as_librdkafka() -> None:
    kafka = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="svc",
                          sasl_password="s3cret")  # type: ignore[arg-type]
    creds = faust_credentials(kafka)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == ("svc", "s3cret", "SCRAM-SHA-512")
    assert creds.ssl_context is not None
    conf = client_config(kafka)
    assert (conf["security.protocol"], conf["sasl.mechanism"], conf["sasl.username"]) == ("SASL_SSL", "SCRAM-SHA-512", "svc")


def test_tls_only_gives_an_ssl_context_and_the_ca_reaches_librdkafka(tmp_path) -> None:
    import ssl

    kafka = KafkaSettings(security_protocol="SSL")
    assert isinstance(faust_credentials(kafka), faust.SSLCredentials)
    assert "ssl.ca.location" not in client_config(kafka)
    ca = tmp_path / "ca.pem"
    ca.write_text("")  # an empty bundle is refused: proof the path is really read
    with pytest.raises(ssl.SSLError):
        faust_credentials(KafkaSettings(security_protocol="SSL", ssl_ca_location=str(ca)))
    assert client_config(KafkaSettings(security_protocol="SSL", ssl_ca_location=str(ca)))["ssl.ca.location"] == str(ca)


def test_sasl_without_a_password_or_with_an_unknown_mechanism_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="sasl_username"):
        faust_credentials(KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN"))
    with pytest.raises(ConfigError, match="AWS_MSK_IAM"):
        faust_credentials(KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="AWS_MSK_IAM", sasl_username="u",
                                        sasl_password="p"))  # type: ignore[arg-type]


def test_an_unknown_security_protocol_is_refused() -> None:
    with pytest.raises(ValueError):
        KafkaSettings(security_protocol="TLS")


@pytest.mark.parametrize("settings", [
    {},
    {"security_protocol": "SSL"},
    {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "svc", "sasl_password": "pw"},  # no mechanism: PLAIN on both
    {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "svc", "sasl_password": "pw"},
], ids=["plaintext", "ssl", "sasl-default-mechanism", "sasl-ssl-scram"])
def test_both_client_stacks_carry_the_same_security_settings(settings: dict) -> None:
    from voicenote.kafka import admin_config, client_config, consumer_config, producer_config

    kafka = KafkaSettings(bootstrap_servers="b1:9092,b2:9092", **settings)
    confluent, aio = client_config(kafka, "confluent"), client_config(kafka, "aiokafka")
    assert confluent["bootstrap.servers"].split(",") == aio["bootstrap_servers"]
    assert confluent["security.protocol"] == aio["security_protocol"] == kafka.security_protocol
    assert confluent.get("sasl.mechanism") == aio["sasl_mechanism"]
    assert confluent.get("sasl.username") == aio["sasl_plain_username"]
    assert confluent.get("sasl.password") == aio["sasl_plain_password"]
    assert (aio["ssl_context"] is not None) == kafka.security_protocol.endswith("SSL")
    # What every confluent-kafka client is built from (voicenote.kafka's factories; nothing builds one by hand).
    assert producer_config(kafka) == admin_config(kafka) == confluent
    assert consumer_config(kafka, "g", {"enable.auto.commit": False}) == {**confluent, "group.id": "g", "enable.auto.commit": False}


def test_a_sasl_cluster_without_credentials_is_refused_by_both_stacks() -> None:
    from voicenote.kafka import client_config

    kafka = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN")
    for stack in ("confluent", "aiokafka"):
        with pytest.raises(ConfigError, match="sasl_username"):
            client_config(kafka, stack)  # type: ignore[arg-type]


def test_librdkafka_lines_go_through_python_logging_not_straight_to_stderr(caplog, capfd) -> None:
    """A JSON-logging process writes only JSON: librdkafka's own lines reach the ``voicenote.kafka.librdkafka``
    logger (and so the configured formatter) instead of its ``%3|...|FAIL|`` lines on stderr."""
    import logging

    from ops.services import free_port
    from voicenote.kafka import producer

    port = free_port()  # nothing listens: librdkafka logs the refused connection at once
    client = producer(KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}"))
    with caplog.at_level(logging.INFO, logger="voicenote.kafka.librdkafka"):
        for _ in range(40):  # 4 s at most; the first refusal comes within milliseconds
            client.poll(0.1)
            if any("Connection refused" in r.getMessage() for r in caplog.records):
                break
    client.flush(0)
    del client
    refused = [r for r in caplog.records if r.name == "voicenote.kafka.librdkafka" and "Connection refused" in r.getMessage()]
    assert refused and refused[0].levelno == logging.ERROR, [r.getMessage() for r in caplog.records]
    # librdkafka's own format (``%3|<time>|FAIL|rdkafka#producer-1| ...``); a handler some earlier test left on
    # the root logger may still print the record itself, in Python's format.
    assert "|FAIL|rdkafka#" not in capfd.readouterr().err
