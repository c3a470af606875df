"""docker-compose.yml and the observability files agree with the code: settings, names, ports, metrics."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib

import pytest
from prometheus_client import CollectorRegistry

from ops.observability.dashboard import OUT as DASHBOARD_JSON
from ops.observability.dashboard import PANELS, render
from producer_api.metrics import ApiMetrics
from stream_workers.metrics import CompletionMetrics, ProgressMetrics, SynthesisMetrics, WebhookMetrics
from tests.e2e.test_compose_boot import DEV_TOKEN, compose, interpolate, our_services
from tests.k8s_support import ROOT, load_yaml, setting_names, settings_from, synthesis_route

PENDING_SETTINGS: set[str] = set()  # settings the model-routing work adds, where compose sets one early
SHUTDOWN_MARGIN_SECONDS = 10


def _env(svc: dict) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in (svc.get("environment") or {}).items()}


def _seconds(text: str) -> float:
    return float(text.rstrip("s"))


@pytest.mark.parametrize("name", sorted(our_services()))
def test_each_service_sets_only_real_settings_and_builds_them(name: str) -> None:
    env = _env(our_services()[name])
    unknown = {k for k in env if k.startswith("VOICENOTE_")} - setting_names() - PENDING_SETTINGS
    assert not unknown, f"{name}: variables no setting reads: {unknown}"
    settings_from(env)


def test_images_are_pinned_and_ours_carry_the_release() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, svc in compose()["services"].items():
        image, _, tag = svc["image"].rpartition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {svc['image']} is not pinned"
        if "build" in svc:
            assert tag == version, name


def test_the_api_has_a_key_for_the_documented_token_and_a_public_url() -> None:
    api = settings_from(_env(our_services()["api"])).api
    assert [k.sha256 for k in api.keys] == [hashlib.sha256(DEV_TOKEN.encode()).hexdigest()]
    assert not api.allow_anonymous
    assert api.public_base_url == "http://localhost:8000"  # the published port, not the container's loopback


def test_the_gpu_profile_worker_consumes_its_own_topic_and_group() -> None:
    services = our_services()
    cpu, gpu = _env(services["worker-synthesis"]), _env(services["worker-synthesis-gpu"])
    assert services["worker-synthesis-gpu"]["profiles"] == ["gpu"]
    assert gpu["VOICENOTE_ENGINE__KIND"] == "s1mini"
    cpu_route = synthesis_route(settings_from(cpu))
    gpu_route = synthesis_route(settings_from(gpu))
    assert cpu_route[:2] != gpu_route[:2]
    assert gpu_route[1] == "voicenote-synthesis-s1mini"


def test_long_running_services_have_a_healthcheck_on_their_own_port_and_a_grace_for_the_drain() -> None:
    for name, svc in our_services().items():
        if svc["command"][0] not in ("api", "worker"):
            continue
        test = " ".join(svc["healthcheck"]["test"])
        port = int(re.search(r"127\.0\.0\.1:(\d+)/", test).group(1))  # type: ignore[union-attr]
        settings = settings_from(_env(svc))
        if svc["command"][0] == "worker":
            assert "/readyz" in test and port == settings.worker.web_port, name
            assert settings.worker.web_host == "0.0.0.0"
            assert _seconds(svc.get("stop_grace_period", "10s")) >= settings.synthesis.shutdown_grace_seconds + SHUTDOWN_MARGIN_SECONDS
        else:
            assert port == int(svc["command"][svc["command"].index("--port") + 1])


def test_prometheus_scrapes_every_long_running_service_of_ours_on_its_port() -> None:
    scraped = {}
    for job in load_yaml(ROOT / "ops" / "observability" / "prometheus.yml")["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.split(":")
                scraped[host] = int(port)
    expected = {}
    for name, svc in our_services().items():
        if svc["command"][0] == "worker":
            expected[name] = settings_from(_env(svc)).worker.web_port
        elif svc["command"][0] == "api":
            expected[name] = int(svc["command"][svc["command"].index("--port") + 1])
    assert scraped == expected
    assert compose()["services"]["prometheus"]["profiles"] == ["observability"]


def _exposed_metric_names() -> set[str]:
    names = set()
    registries = [SynthesisMetrics().registry, CompletionMetrics().registry, WebhookMetrics().registry, ProgressMetrics().registry,
                  ApiMetrics().registry]
    for registry in registries:
        assert isinstance(registry, CollectorRegistry)
        for family in registry.collect():
            names |= {s.name for s in family.samples}
            names.add(family.name)
            if family.type == "histogram":
                names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
            if family.type == "counter":
                names.add(family.name + "_total")
    return names


def test_every_metric_the_dashboard_and_alerts_query_is_one_the_code_exposes() -> None:
    exposed = _exposed_metric_names()
    queries = [expr for _, _, panel in PANELS for _, expr in panel]
    queries += [rule["expr"] for group in load_yaml(ROOT / "ops" / "observability" / "alerts.yml")["groups"]
                for rule in group["rules"]]
    used = {m for q in queries for m in re.findall(r"\bvoicenote_[a-z0-9_]+", q)}
    assert used and not used - exposed, f"queried but never exposed: {sorted(used - exposed)}"


def test_the_dashboard_json_is_the_generated_one_and_covers_the_issue_panels() -> None:
    assert DASHBOARD_JSON.read_text() == render(), "run `python -m ops.observability.dashboard`"
    titles = " ".join(p["title"].lower() for p in json.loads(DASHBOARD_JSON.read_text())["panels"])
    for needed in ("lag", "batch size", "busy", "latency", "dead letter", "webhook"):
        assert needed in titles
