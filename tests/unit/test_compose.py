"""docker-compose.yml and the observability files agree with the code: settings, names, ports, metrics."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from urllib.parse import urlsplit

import pytest
from prometheus_client import CollectorRegistry

from ops.observability.dashboard import OUT as DASHBOARD_JSON
from ops.observability.dashboard import PANELS, render
from producer_api.metrics import ApiMetrics
from stream_workers.completion.early_check import EarlyCheckMetrics
from stream_workers.runtime.metrics import CompletionMetrics, ProgressMetrics, SynthesisMetrics, WebhookMetrics
from tests.e2e.test_compose_boot import DEV_TOKEN, compose, interpolate, our_services
from tests.k8s_support import ROOT, load_yaml, setting_names, settings_from, synthesis_route
from voicenote.settings import KafkaSettings

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


def _scrape_jobs() -> dict[str, dict]:
    return {job["job_name"]: job for job in load_yaml(ROOT / "ops" / "observability" / "prometheus.yml")["scrape_configs"]}


def test_prometheus_scrapes_every_long_running_service_of_ours_on_its_port() -> None:
    scraped = {}
    for job in _scrape_jobs().values():
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.split(":")
                scraped[host] = int(port)
        for dns in job.get("dns_sd_configs", []):
            for host in dns["names"]:
                scraped[host] = int(dns["port"])
    expected = {}
    for name, svc in our_services().items():
        if svc["command"][0] == "worker":
            expected[name] = settings_from(_env(svc)).worker.web_port
        elif svc["command"][0] == "api":
            expected[name] = int(svc["command"][svc["command"].index("--port") + 1])
    assert scraped == expected
    assert compose()["services"]["prometheus"]["profiles"] == ["observability"]


def test_a_service_of_an_absent_profile_is_no_target_so_never_down() -> None:
    """Static targets are every `up` service; a profile's service is found by DNS, absent without it."""
    services = compose()["services"]
    for name, job in _scrape_jobs().items():
        static = [t.split(":")[0] for c in job.get("static_configs", []) for t in c["targets"]]
        assert all(not services[host].get("profiles") for host in static), f"{name}: a profile's service as a static target"
        for dns in job.get("dns_sd_configs", []):
            assert dns["type"] == "A"
            assert all(services[host].get("profiles") for host in dns["names"]), name
    gpu = _scrape_jobs()["voicenote-workers-gpu"]
    assert [d["names"] for d in gpu["dns_sd_configs"]] == [["worker-synthesis-gpu"]]
    # No job adds a `group` label: the workers put their consumer group on their own lag series (issue 21), so a
    # scrape label would only shadow it (as exported_group).
    assert all("group" not in str(job.get("relabel_configs", "")) for job in _scrape_jobs().values())
    assert all("labels" not in c for job in _scrape_jobs().values() for c in job.get("static_configs", []))
    # The down alert covers every job, the GPU one included while its profile runs.
    down = next(r for g in load_yaml(ROOT / "ops" / "observability" / "alerts.yml")["groups"] for r in g["rules"]
                if r["alert"] == "VoicenoteTargetDown")
    pattern = re.search(r'up\{job=~"([^"]+)"\} == 0', down["expr"]).group(1)  # type: ignore[union-attr]
    assert all(re.fullmatch(pattern, name) for name in _scrape_jobs())


def test_the_schema_registry_is_karapace_5_started_by_its_registry_entrypoint() -> None:
    registry = compose()["services"]["schema-registry"]
    image, _, tag = registry["image"].rpartition(":")
    assert image == "ghcr.io/aiven-open/karapace" and int(tag.split(".")[0]) >= 5  # 4.x has no karapace.__main__
    assert registry["entrypoint"] == ["python3", "-m", "karapace"]
    env = _env(registry)
    assert env["KARAPACE_KARAPACE_REGISTRY"] == "true"
    voicenote = settings_from(_env(our_services()["api"])).kafka
    assert env["KARAPACE_BOOTSTRAP_URI"] == voicenote.bootstrap_servers
    url = urlsplit(voicenote.schema_registry_url)
    assert (url.hostname, url.port) == ("schema-registry", int(env["KARAPACE_PORT"])) and env["KARAPACE_HOST"] == "0.0.0.0"
    assert env["KARAPACE_ADVERTISED_HOSTNAME"] == "schema-registry"
    # Healthy only when it can take a write: the schema topic read, and this node primary.
    health = " ".join(registry["healthcheck"]["test"])
    assert f"127.0.0.1:{env['KARAPACE_PORT']}/_health" in health
    assert "schema_registry_ready" in health and "schema_registry_is_primary" in health
    # Every long-running service of ours publishes or reads registry-framed events: each waits for it.
    for name, svc in our_services().items():
        if svc["command"][0] in ("api", "worker"):
            assert _env(svc)["VOICENOTE_KAFKA__SCHEMA_REGISTRY_URL"] == voicenote.schema_registry_url, name
            assert svc["depends_on"]["schema-registry"] == {"condition": "service_healthy"}, name


def test_presigned_audio_links_name_the_published_minio_port_not_the_network_name() -> None:
    minio_ports = {int(p.split(":")[1]): int(p.split(":")[0]) for p in compose()["services"]["minio"]["ports"]}
    for name, svc in our_services().items():
        storage = settings_from(_env(svc)).storage
        internal, public = urlsplit(storage.s3_endpoint_url), urlsplit(storage.s3_public_endpoint_url)
        assert internal.hostname == "minio", name
        assert public.hostname == "localhost" and public.port == minio_ports[internal.port], name


def test_kafka_has_a_listener_the_host_reaches_where_host_tools_look_by_default() -> None:
    kafka = compose()["services"]["kafka"]
    env = _env(kafka)
    listeners = dict(_listener(x) for x in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(_listener(x) for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocols) == set(listeners) and set(advertised) <= set(listeners)
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised and env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    # The services' bootstrap is the network listener.
    bootstrap = settings_from(_env(our_services()["api"])).kafka.bootstrap_servers
    assert bootstrap in {f"{h}:{p}" for h, p in advertised.values()} and not bootstrap.startswith("localhost")
    # The host's: advertised as localhost on the published port, which is the CLI's default bootstrap.
    host = [name for name, (h, _) in advertised.items() if h == "localhost"]
    assert len(host) == 1
    published = {int(p.split(":")[1]): int(p.split(":")[0]) for p in map(interpolate, kafka["ports"])}
    host_port = advertised[host[0]][1]
    assert published[listeners[host[0]][1]] == host_port
    assert KafkaSettings().bootstrap_servers.rsplit(":", 1)[1] == str(host_port)


def _listener(text: str) -> tuple[str, tuple[str, int]]:
    name, rest = text.split("://")
    host, port = rest.rsplit(":", 1)
    return name, (host, int(port))


def test_every_long_running_service_restarts_and_the_one_shots_say_they_do_not() -> None:
    """One-shots that other services wait for with service_completed_successfully are never restarted."""
    completed = {dep for svc in compose()["services"].values() if isinstance(svc.get("depends_on"), dict)
                 for dep, cond in svc["depends_on"].items() if cond["condition"] == "service_completed_successfully"}
    assert completed == {"topics", "storage"}
    for name, svc in compose()["services"].items():
        assert svc.get("restart") == ("no" if name in completed else "unless-stopped"), name


def test_provisioning_waits_for_healthy_backing_services() -> None:
    services = compose()["services"]
    assert services["storage"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert services["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert services["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    for name, svc in services.items():
        depends = svc.get("depends_on") or {}
        for dep, cond in (depends.items() if isinstance(depends, dict) else []):
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health, which {dep} never reports"


def _exposed_metric_names() -> set[str]:
    names = set()
    registries = [SynthesisMetrics().registry, CompletionMetrics().registry, WebhookMetrics().registry, ProgressMetrics().registry,
                  ApiMetrics().registry, EarlyCheckMetrics().registry]
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
    # and the shipped JSON itself (compose's provisioning and the k8s sidecar ConfigMap), panel by panel
    shipped = [t["expr"] for p in json.loads(DASHBOARD_JSON.read_text())["panels"] for t in p["targets"]]
    assert shipped and set(shipped) == set(queries)
    queries += [rule["expr"] for group in load_yaml(ROOT / "ops" / "observability" / "alerts.yml")["groups"]
                for rule in group["rules"]]
    used = {m for q in queries for m in re.findall(r"\bvoicenote_[a-z0-9_]+", q)}
    assert used and not used - exposed, f"queried but never exposed: {sorted(used - exposed)}"


def test_the_dashboard_json_is_the_generated_one_and_covers_the_issue_panels() -> None:
    assert DASHBOARD_JSON.read_text() == render(), "run `python -m ops.observability.dashboard`"
    titles = " ".join(p["title"].lower() for p in json.loads(DASHBOARD_JSON.read_text())["panels"])
    for needed in ("lag", "batch size", "busy", "latency", "dead letter", "webhook"):
        assert needed in titles
