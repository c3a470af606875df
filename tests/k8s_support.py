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


def synthesis_route(settings: Settings) -> tuple[str, str, int]:
    """(request topic, consumer group, partitions) a synthesis worker with ``settings`` consumes.

    Each model family has its own request topic and group, and a worker's family follows its engine
    (S1-mini: ``s1mini``; Piper and the null engine: the CPU family). Where the catalog and
    ``voicenote.models`` name them (the model-routing work), they answer; otherwise the same names are
    built here: ``voicenote.requests.<family>.v1`` and ``<group_id>-synthesis-<family>``, the CPU family
    keeping ``voicenote.requests.v1`` and ``<group_id>-synthesis``.
    """
    catalog = settings.kafka.catalog()
    family = "s1mini" if settings.engine.kind.value == "s1mini" else "piper"
    try:
        from voicenote.models import family_of, synthesis_group  # type: ignore[import-not-found]

        family = family_of(settings.engine.kind)
        group = synthesis_group(settings.worker.group_id, family)
    except ImportError:
        group = f"{settings.worker.group_id}-synthesis" + ("" if family == "piper" else f"-{family}")
    requests_for = getattr(catalog, "requests_for", None)
    if callable(requests_for):
        spec = requests_for(family)
        return spec.name, group, spec.partitions
    if family == "piper":
        return catalog.requests.name, group, catalog.requests.partitions
    return catalog.requests.name.replace("requests.v1", f"requests.{family}.v1"), group, catalog.requests.partitions


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
