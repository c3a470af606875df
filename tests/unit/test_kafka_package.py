"""voicenote.kafka as a package: every public name still imported from ``voicenote.kafka``, and settings that do
not import it back (the kafka <-> settings circle of issue 20)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import voicenote.kafka as kafka
from voicenote import settings

NAMES_CALLERS_USE = ("AsyncProducer", "OFFSET_BEGINNING", "SASL_MECHANISMS", "TopicCheck", "admin_client", "broker_answers",
                     "check_topics", "client_config", "ensure_topics", "read_to_end")


def test_every_public_name_resolves_from_the_package() -> None:
    assert set(NAMES_CALLERS_USE) <= set(kafka.__all__)
    for name in kafka.__all__:
        assert getattr(kafka, name) is not None, name
    # A submodule named like a factory would shadow it on the package (voicenote.kafka.producer once did).
    for factory in ("producer", "consumer", "admin_client", "event_codecs", "client_config"):
        assert inspect.isfunction(getattr(kafka, factory)), factory


def test_settings_do_not_import_voicenote_kafka() -> None:
    tree = ast.parse(Path(settings.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {name for name in imported if name.startswith("voicenote.kafka")}
    assert not hasattr(settings.KafkaSettings, "client_config")  # voicenote.kafka.client_config(settings) instead
