"""What the deployment tests share: the rendered overlays, the settings a pod would build, model routes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.kustomize import render
from voicenote.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "eks": K8S / "overlays" / "eks"}
# The model a worker serves when VOICENOTE_WORKER__MODEL is unset, and the models on the CPU voice.
CPU_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


def rendered(overlay: str) -> list[dict[str, Any]]:
    return render(OVERLAYS[overlay])


def setting_names() -> set[str]:
    return {f"VOICENOTE_{section.upper()}__{name.upper()}"
            for section, field in Settings.model_fields.items()
            for name in field.annotation.model_fields}  # type: ignore[union-attr]


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Exactly ``env`` as the VOICENOTE_* environment (what a pod or container sees)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("VOICENOTE_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("VOICENOTE_")]:
            del os.environ[key]
        os.environ.update(saved)


def settings_from(env: dict[str, str]) -> Settings:
    with environment(env):
        return Settings()


def model_route(settings: Settings, model: str | None) -> tuple[str, str, int]:
    """(request topic, consumer group, partitions) of the synthesis worker serving ``model``.

    Each model family has its own request topic and group (docs/architecture.md). The CPU models share
    the catalog's request topic and the role's group; another family gets ``requests.<family>.v1`` and
    ``<group>-<family>``, the names the model-routing work uses; a catalog that knows the model answers
    for itself.
    """
    catalog = settings.kafka.catalog()
    group = f"{settings.worker.group_id}-synthesis"
    if model is None or model in CPU_MODELS:
        return catalog.requests.name, group, catalog.requests.partitions
    for_model = getattr(catalog, "requests_for", None)
    if callable(for_model):
        spec = for_model(model)
        return spec.name, f"{group}-{model.replace('-', '')}", spec.partitions
    family = model.replace("-", "")
    return catalog.requests.name.replace("requests.v1", f"requests.{family}.v1"), f"{group}-{family}", catalog.requests.partitions


def container_env(container: dict[str, Any], configmaps: dict[str, dict[str, str]]) -> dict[str, str]:
    """A container's environment: its envFrom ConfigMaps, then its literal env (secrets stand as '<secret>')."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", "<secret>")
    return env


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
