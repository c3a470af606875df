"""The Kubernetes manifests, after the overlays, are valid and agree with the code they configure.

Rendering: tests/kustomize.py (the subset of kustomize that k8s/ uses); where a kustomize binary is
present (``kubectl kustomize``), one test checks that both render the same objects, otherwise that test
is skipped and says so. Built-in kinds are validated with kubernetes-validate (strict: unknown fields
fail); KEDA, Karpenter and Prometheus Operator objects against their CRD schemas from the npm packages
in tests/crd (``make install`` installs them; Node.js is required, and the test says so when missing).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.k8s_support import (
    K8S,
    OVERLAYS,
    ROOT,
    container_env,
    load_yaml,
    rendered,
    setting_names,
    settings_from,
    synthesis_route,
)

# Set by the dev overlay (the API routes no model to the GPU family there); added by the model-routing work.
PENDING_SETTINGS = {"VOICENOTE_MODELS__FAMILIES"}
K8S_VERSION = "1.31"
CRD_DIR = ROOT / "tests" / "crd"
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
SHUTDOWN_MARGIN_SECONDS = 10  # publish + commit + Faust's own stop after the drain hook's share


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _configmaps(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {name: o.get("data", {}) for name, o in _by_kind(objects, "ConfigMap").items()}


def _workloads(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, pod spec) of every Deployment and Job."""
    return [(o, o["spec"]["template"]["spec"]) for o in objects if o["kind"] in ("Deployment", "Job")]


def _settings_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("VOICENOTE_") and v != "<secret>"}


def _is_builtin(obj: dict[str, Any]) -> bool:
    group = obj["apiVersion"].rpartition("/")[0]
    return group in ("", "apps", "batch", "policy", "autoscaling") or group.endswith(".k8s.io")


# --- rendering ------------------------------------------------------------------------------------------

def test_every_base_manifest_is_listed_in_the_kustomization() -> None:
    for folder in (OVERLAYS["base"], OVERLAYS["base"] / "jobs"):
        listed = set(load_yaml(folder / "kustomization.yaml")["resources"])
        present = {p.name for p in folder.iterdir() if p.suffix == ".yaml" or p.is_dir()} - {"kustomization.yaml"}
        assert listed == present, folder


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kustomize binary (kubectl) here: the Python renderer stands alone")
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_python_renderer_matches_kustomize(overlay: str) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(OVERLAYS[overlay])], capture_output=True, text=True, check=True).stdout
    theirs = [d for d in yaml.safe_load_all(out) if d]

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    assert sorted(rendered(overlay), key=key) == sorted(theirs, key=key)


# --- schemas --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_builtin_objects_validate_strictly_against_the_kubernetes_schema(overlay: str) -> None:
    checked = 0
    for obj in rendered(overlay):
        if _is_builtin(obj):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            checked += 1
    assert checked >= 10


def test_the_kubernetes_validation_refuses_a_misspelt_field() -> None:
    deployment = _by_kind(rendered("base"), "Deployment")["voicenote-api"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz", "port": 8000}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def _validate_crds(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if shutil.which("node") is None:
        pytest.skip("no Node.js here: KEDA/Karpenter/Prometheus Operator schemas not checked")
    assert (CRD_DIR / "node_modules" / "@kubernetes-models").is_dir(), "CRD schemas missing: run `make install`"
    out = subprocess.run(["node", str(CRD_DIR / "validate.mjs")], input=json.dumps(objects), capture_output=True,
                         text=True, check=True, cwd=CRD_DIR)
    return list(json.loads(out.stdout))


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_custom_resources_validate_against_their_crd_schemas(overlay: str) -> None:
    custom = [o for o in rendered(overlay) if not _is_builtin(o)]
    results = _validate_crds(custom)
    assert [r for r in results if r["error"]] == []
    kinds = {r["kind"] for r in results}
    assert {"ScaledObject", "TriggerAuthentication"} <= kinds
    if overlay == "eks":
        assert {"NodePool", "EC2NodeClass", "PodMonitor", "ServiceMonitor", "PrometheusRule"} <= kinds


def test_the_crd_validation_refuses_bad_objects() -> None:
    objects = rendered("eks")
    scaled = _by_kind(objects, "ScaledObject")["voicenote-worker-s1mini-spot"]
    scaled["spec"]["minReplicaCount"] = "zero"
    pool = _by_kind(objects, "NodePool")["voicenote-gpu-spot"]
    pool["spec"]["disruption"]["consolidationPolicy"] = "Sometimes"
    results = _validate_crds([scaled, pool])
    assert all(r["error"] for r in results), results


# --- consistency with the code --------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_voicenote_variable_is_a_setting_and_every_pod_builds_its_settings(overlay: str) -> None:
    objects = rendered(overlay)
    maps = _configmaps(objects)
    known = setting_names() | PENDING_SETTINGS
    for name in maps["voicenote-config"]:
        assert name in known, f"ConfigMap key that no setting reads: {name}"
    for obj, pod in _workloads(objects):
        for container in pod["containers"]:
            env = container_env(container, maps)
            unknown = {k for k in env if k.startswith("VOICENOTE_")} - known
            assert not unknown, f"{obj['metadata']['name']}: variables no setting reads: {unknown}"
            settings_from(_settings_env(env))  # parses, and passes the settings' own checks


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_each_scaled_object_watches_the_topic_and_group_its_workers_consume(overlay: str) -> None:
    objects = rendered(overlay)
    maps = _configmaps(objects)
    deployments = _by_kind(objects, "Deployment")
    auths = _by_kind(objects, "TriggerAuthentication")
    for scaled in _by_kind(objects, "ScaledObject").values():
        target = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
        env = container_env(target["spec"]["template"]["spec"]["containers"][0], maps)
        settings = settings_from(_settings_env(env))
        topic, group, partitions = synthesis_route(settings)
        (trigger,) = scaled["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert (meta["topic"], meta["consumerGroup"]) == (topic, group)
        assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
        kafka = settings.kafka
        if kafka.security_protocol.startswith("SASL"):
            assert meta["sasl"] == KEDA_SASL[kafka.sasl_mechanism or "PLAIN"]
            ref = auths[trigger["authenticationRef"]["name"]]
            params = {p["parameter"]: (p["name"], p["key"]) for p in ref["spec"]["secretTargetRef"]}
            workers = {v["name"]: (v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
                       for v in target["spec"]["template"]["spec"]["containers"][0]["env"] if "valueFrom" in v}
            assert params["username"] == workers["VOICENOTE_KAFKA__SASL_USERNAME"]
            assert params["password"] == workers["VOICENOTE_KAFKA__SASL_PASSWORD"]
        else:
            assert "authenticationRef" not in trigger and "sasl" not in meta
        assert (meta.get("tls") == "enable") == kafka.security_protocol.endswith("SSL")
        # Consumers beyond the partitions sit idle: the scaled pods plus any fixed pod of the same group.
        same_group = [d for name, d in deployments.items() if name != target["metadata"]["name"]
                      and synthesis_route(settings_from(_settings_env(container_env(
                          d["spec"]["template"]["spec"]["containers"][0], maps))))[1] == group
                      and d["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["worker", "synthesis"]]
        fixed = sum(d["spec"]["replicas"] for d in same_group)
        assert scaled["spec"]["maxReplicaCount"] + fixed <= partitions
        assert scaled["spec"].get("minReplicaCount", 0) <= scaled["spec"]["maxReplicaCount"]


def test_the_gpu_workers_consume_only_the_s1mini_topic_and_the_cpu_worker_the_cpu_one() -> None:
    objects = rendered("eks")
    maps = _configmaps(objects)
    routes = {}
    for name, d in _by_kind(objects, "Deployment").items():
        container = d["spec"]["template"]["spec"]["containers"][0]
        if container["args"][:2] == ["worker", "synthesis"]:
            env = container_env(container, maps)
            routes[name] = (env.get("VOICENOTE_ENGINE__KIND"), synthesis_route(settings_from(_settings_env(env)))[:2])
    cpu = synthesis_route(settings_from(_settings_env(maps["voicenote-config"])))[:2]
    gpu = synthesis_route(settings_from({**_settings_env(maps["voicenote-config"]), "VOICENOTE_ENGINE__KIND": "s1mini"}))[:2]
    assert routes == {
        "voicenote-worker-synthesis-cpu": ("piper", cpu),
        "voicenote-worker-s1mini-warm": ("s1mini", gpu),
        "voicenote-worker-s1mini-spot": ("s1mini", gpu),
    }
    assert cpu != gpu and gpu == ("voicenote.requests.s1mini.v1", "voicenote-synthesis-s1mini")
    assert "voicenote-worker-s1mini-spot" not in _by_kind(rendered("dev"), "Deployment")  # no GPU nodes in dev


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_workers_serve_probes_and_metrics_on_the_port_their_settings_name(overlay: str) -> None:
    objects = rendered(overlay)
    maps = _configmaps(objects)
    for obj in _by_kind(objects, "Deployment").values():
        (container,) = obj["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in container, f"{obj['metadata']['name']} has no {probe}"
            assert container[probe]["httpGet"]["port"] in ports
        settings = settings_from(_settings_env(container_env(container, maps)))
        if container["args"][0] == "worker":
            assert ports["metrics"] == settings.worker.web_port
            assert settings.worker.web_host == "0.0.0.0"  # reachable by the kubelet and Prometheus
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        else:
            assert ports["http"] == int(container["args"][container["args"].index("--port") + 1])


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_s1mini_workers_refusing_their_checkpoint_stay_up_not_ready_instead_of_restarting(overlay: str) -> None:
    # A refused checkpoint serves /healthz 200 and /readyz 503 with the reason (stream_workers/main.py):
    # a startup probe on /readyz would restart it every 10 minutes, a liveness probe on it at once.
    checked = []
    for name, obj in _by_kind(rendered(overlay), "Deployment").items():
        (container,) = obj["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if env.get("VOICENOTE_ENGINE__KIND") == "s1mini":
            checked.append(name)
            assert container["startupProbe"]["httpGet"]["path"] == "/healthz", obj["metadata"]["name"]
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", obj["metadata"]["name"]
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", obj["metadata"]["name"]
    assert checked or overlay == "dev"  # dev has no GPU workers


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_worker_grace_period_covers_its_drain(overlay: str) -> None:
    objects = rendered(overlay)
    maps = _configmaps(objects)
    for obj in _by_kind(objects, "Deployment").values():
        pod = obj["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        settings = settings_from(_settings_env(container_env(container, maps)))
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if container["args"][0] == "worker":
            assert grace >= settings.synthesis.shutdown_grace_seconds + SHUTDOWN_MARGIN_SECONDS, obj["metadata"]["name"]
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert grace > pre_stop


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_disruption_budget_lets_a_drain_take_one_pod(overlay: str) -> None:
    objects = rendered(overlay)
    deployments = _by_kind(objects, "Deployment")
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h["spec"]["minReplicas"] for h in _by_kind(objects, "HorizontalPodAutoscaler").values()}
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s["spec"].get("minReplicaCount", 0) for s in _by_kind(objects, "ScaledObject").values()}
    for pdb in _by_kind(objects, "PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"]
        covered = [d for d in deployments.values()
                   if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert covered, f"{pdb['metadata']['name']} selects no pods"
        if "maxUnavailable" in pdb["spec"]:
            assert pdb["spec"]["maxUnavailable"] >= 1
        else:
            fewest = sum(hpas.get(d["metadata"]["name"], scaled.get(d["metadata"]["name"], d["spec"].get("replicas", 1))) for d in covered)
            assert fewest - pdb["spec"]["minAvailable"] >= 1, pdb["metadata"]["name"]


def test_the_spot_pool_has_room_for_every_scaled_gpu_worker_and_pools_are_tainted() -> None:
    objects = rendered("eks")
    pools = _by_kind(objects, "NodePool")
    deployments = _by_kind(objects, "Deployment")
    scaled = _by_kind(objects, "ScaledObject")["voicenote-worker-s1mini-spot"]
    assert int(pools["voicenote-gpu-spot"]["spec"]["limits"]["nvidia.com/gpu"]) >= scaled["spec"]["maxReplicaCount"]
    for name, capacity in (("voicenote-gpu-spot", "spot"), ("voicenote-gpu-on-demand", "on-demand")):
        spec = pools[name]["spec"]["template"]["spec"]
        reqs = {r["key"]: r["values"] for r in spec["requirements"]}
        assert reqs["karpenter.sh/capacity-type"] == [capacity]
        assert len(reqs["karpenter.k8s.aws/instance-family"]) >= 2
        taints = {t["key"] for t in spec["taints"]}
        for d in deployments.values():
            pod = d["spec"]["template"]["spec"]
            if pod.get("nodeSelector", {}).get("karpenter.sh/nodepool") == name:
                assert taints <= {t["key"] for t in pod["tolerations"]}
                assert d["spec"]["template"]["metadata"]["labels"]["capacity"] == capacity


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_images_are_pinned_to_the_release_and_pods_run_as_non_root(overlay: str) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for _, pod in _workloads(rendered(overlay)):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["serviceAccountName"] == "voicenote"  # IRSA
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            name, _, tag = container["image"].rpartition(":")
            assert tag and tag != "latest", container["image"]
            if name.rpartition("/")[2] in ("voicenote", "voicenote-gpu"):
                assert tag == version


def test_the_eks_service_account_carries_the_irsa_role() -> None:
    sa = _by_kind(rendered("eks"), "ServiceAccount")["voicenote"]
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::123456789012:role/")


def test_the_api_starts_with_keys_or_explicitly_anonymous() -> None:
    for overlay in OVERLAYS:
        objects = rendered(overlay)
        (container,) = _by_kind(objects, "Deployment")["voicenote-api"]["spec"]["template"]["spec"]["containers"]
        env = container_env(container, _configmaps(objects))
        anonymous = settings_from(_settings_env(env)).api.allow_anonymous
        assert anonymous or env.get("VOICENOTE_API__KEYS") == "<secret>", overlay
        assert not settings_from(_settings_env(env)).api.public_base_url.startswith("http://127.0.0.1")
    assert not settings_from(_settings_env(_configmaps(rendered("eks"))["voicenote-config"])).api.allow_anonymous


def test_the_prometheus_rule_carries_the_alert_rules_file() -> None:
    rule = _by_kind(rendered("eks"), "PrometheusRule")["voicenote"]
    assert rule["spec"]["groups"] == load_yaml(ROOT / "ops" / "observability" / "alerts.yml")["groups"]


def test_no_manifest_mounts_a_volume_claim_that_does_not_exist() -> None:
    for overlay in OVERLAYS:
        objects = rendered(overlay)
        claims = set(_by_kind(objects, "PersistentVolumeClaim"))
        for _, pod in _workloads(objects):
            for volume in pod.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_k8s_folder_has_only_the_overlays_the_docs_name() -> None:
    assert {p.name for p in (K8S / "overlays").iterdir()} == {"dev", "eks"}
