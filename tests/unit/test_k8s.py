"""The Kubernetes manifests agree with the topic catalog and the settings they configure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from schemas.topics import build_catalog
from voicenote.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "k8s" / "base"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _config() -> dict[str, str]:
    return _docs("config.yaml")[0]["data"]


def test_every_manifest_is_listed_in_the_kustomization() -> None:
    listed = set(_docs("kustomization.yaml")[0]["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_keda_scales_the_synthesis_group_on_the_request_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("VOICENOTE_"):
            monkeypatch.delenv(key)
    for key, value in _config().items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    catalog = build_catalog(request_partitions=settings.kafka.request_partitions)
    scaled = _docs("keda-scaledobject.yaml")[0]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == catalog.requests.name
    assert trigger["metadata"]["consumerGroup"] == f"{settings.worker.group_id}-synthesis"
    assert trigger["metadata"]["bootstrapServers"] == settings.kafka.bootstrap_servers
    warm = _docs("worker-synthesis-warm.yaml")[0]["spec"]["replicas"]
    assert scaled["spec"]["minReplicaCount"] == 0  # spot scales to zero; the warm one stays
    assert warm == 1
    # More consumers than partitions would sit idle on expensive GPUs.
    assert scaled["spec"]["maxReplicaCount"] + warm <= catalog.requests.partitions
    assert scaled["spec"]["scaleTargetRef"]["name"] == _docs("worker-synthesis-spot.yaml")[0]["metadata"]["name"]


def test_config_map_only_sets_settings_that_exist() -> None:
    fields = {f"VOICENOTE_{section.upper()}__{name.upper()}"
              for section, model in Settings.model_fields.items()
              for name in model.annotation.model_fields}  # type: ignore[union-attr]
    unknown = set(_config()) - fields
    assert not unknown, f"ConfigMap keys that no setting reads: {unknown}"


def test_gpu_workers_get_a_grace_period_for_the_batch_in_hand() -> None:
    for name in ("worker-synthesis-warm.yaml", "worker-synthesis-spot.yaml"):
        spec = _docs(name)[0]["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] >= 30
        assert spec["containers"][0]["args"][:2] == ["worker", "synthesis"]
