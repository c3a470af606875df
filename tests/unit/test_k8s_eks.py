"""What a real EKS cluster needs from the rendered overlays, beyond valid objects (tests/unit/test_k8s.py):
GPU nodes that advertise their GPUs, applies that do not fight the autoscalers or fail on Jobs, workers
that wait for their topics, the warm GPU worker left alone by consolidation, an Ingress without
/metrics, and monitoring objects kube-prometheus-stack picks up. Every check reads the rendered YAML
(tests/kustomize.py, itself checked equal to ``kubectl kustomize``)."""

from __future__ import annotations

import json
import tomllib
from typing import Any
from urllib.parse import urlsplit

import pytest

from ops.cli import build_parser
from tests.k8s_support import OVERLAYS, ROOT, container_env, rendered, settings_from
from tests.unit.test_k8s import _by_kind, _configmaps, _settings_env

GPU_TAINT = "voicenote.io/gpu-worker"
RELEASE_LABEL = "kube-prometheus-stack"


def _tolerates(pod: dict[str, Any], taint: dict[str, Any]) -> bool:
    for t in pod.get("tolerations", []):
        if t.get("key") == taint["key"] and t.get("effect", taint["effect"]) == taint["effect"]:
            if t.get("operator") == "Exists" or t.get("value") == taint.get("value"):
                return True
    return False


def _schedulable_on(pod: dict[str, Any], node_labels: dict[str, str]) -> bool:
    """Whether the pod's nodeSelector and required node affinity accept a node with these labels."""
    if not pod.get("nodeSelector", {}).items() <= node_labels.items():
        return False
    terms = (pod.get("affinity", {}).get("nodeAffinity", {})
             .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms"))
    if not terms:
        return True

    def holds(expr: dict[str, Any]) -> bool:
        value = node_labels.get(expr["key"])
        return {"In": value in expr.get("values", []), "NotIn": value not in expr.get("values", []),
                "Exists": value is not None, "DoesNotExist": value is None}[expr["operator"]]

    return any(all(holds(e) for e in term.get("matchExpressions", [])) for term in terms)


def _pool_nodes(objects: list[dict[str, Any]]) -> dict[str, tuple[dict[str, str], list[dict[str, Any]]]]:
    """Each NodePool's node: the labels Karpenter gives it (the template's and karpenter.sh/nodepool), its taints."""
    return {name: ({**pool["spec"]["template"]["metadata"]["labels"], "karpenter.sh/nodepool": name},
                   pool["spec"]["template"]["spec"]["taints"])
            for name, pool in _by_kind(objects, "NodePool").items()}


# --- GPU nodes: the device plugin --------------------------------------------------------------------

def test_the_eks_overlay_ships_the_nvidia_device_plugin_on_every_gpu_node_and_only_there() -> None:
    objects = rendered("eks")
    plugins = [d for d in _by_kind(objects, "DaemonSet").values()
               if any("k8s-device-plugin" in c["image"] for c in d["spec"]["template"]["spec"]["containers"])]
    assert len(plugins) == 1, "no NVIDIA device plugin DaemonSet in the eks overlay"
    (plugin,) = plugins
    pod = plugin["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    name, _, tag = container["image"].rpartition(":")
    assert name == "nvcr.io/nvidia/k8s-device-plugin" and tag.startswith("v") and tag != "latest"
    assert {"mountPath": "/var/lib/kubelet/device-plugins", "name": "device-plugin"} in container["volumeMounts"]
    assert plugin["metadata"]["namespace"] == "kube-system"
    assert pod["priorityClassName"] == "system-node-critical"
    tolerated = {t["key"] for t in pod["tolerations"]}
    assert {GPU_TAINT, "nvidia.com/gpu"} <= tolerated
    nodes = _pool_nodes(objects)
    assert set(nodes) == {"voicenote-gpu-on-demand", "voicenote-gpu-spot"}
    for pool, (labels, taints) in nodes.items():
        assert GPU_TAINT in {t["key"] for t in taints}
        assert all(_tolerates(pod, t) for t in taints), f"the device plugin does not tolerate {pool}'s taints"
        assert _schedulable_on(pod, labels), f"the device plugin would not run on {pool}'s nodes"
    assert not _schedulable_on(pod, {"kubernetes.io/arch": "amd64", "karpenter.sh/nodepool": "default"}), \
        "the device plugin must be restricted to GPU nodes"


def test_every_gpu_worker_lands_on_a_gpu_node_that_its_pool_makes() -> None:
    objects = rendered("eks")
    nodes = _pool_nodes(objects)
    for name, deployment in _by_kind(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        wants_gpu = any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in pod["containers"])
        fits = [pool for pool, (labels, taints) in nodes.items()
                if _schedulable_on(pod, labels) and all(_tolerates(pod, t) for t in taints)]
        if wants_gpu:
            assert len(fits) == 1, f"{name}: schedulable on {fits}"
            assert pod["nodeSelector"].get("voicenote.io/gpu") == "true"
        else:
            assert not fits, f"{name} (no GPU) would land on a GPU pool: {fits}"


# --- apply does not fight the autoscalers ------------------------------------------------------------

@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_no_replicas_on_objects_that_keda_or_an_hpa_scales(overlay: str) -> None:
    objects = rendered(overlay)
    scaled = {(s["spec"]["scaleTargetRef"].get("kind", "Deployment"), s["spec"]["scaleTargetRef"]["name"])
              for s in _by_kind(objects, "ScaledObject").values()}
    scaled |= {(h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"])
               for h in _by_kind(objects, "HorizontalPodAutoscaler").values()}
    assert scaled, overlay
    present = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    for key in scaled:
        assert key in present, f"{overlay}: the autoscaler's target {key} is not rendered"
        assert "replicas" not in present[key]["spec"], f"{overlay}: {key} sets replicas; each apply would reset the autoscaler"
    if overlay == "eks":
        assert {("Deployment", "voicenote-api"), ("Deployment", "voicenote-worker-synthesis-cpu"),
                ("Deployment", "voicenote-worker-s1mini-spot")} <= scaled
    for scaled_object in _by_kind(objects, "ScaledObject").values():
        assert "minReplicaCount" in scaled_object["spec"]  # the floor lives here, not in the Deployment


# --- Jobs re-apply cleanly ---------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_jobs_are_named_per_release_and_clean_up_after_themselves(overlay: str) -> None:
    """A Job's template is immutable: a fixed name fails the next release's apply. Each release names its
    Jobs (the suffix is the release), and a finished Job goes after its TTL."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    suffix = "-" + version.replace(".", "-").replace("+", "-")
    jobs = _by_kind(rendered(overlay), "Job")
    assert {name.removesuffix(suffix) for name in jobs} == {"voicenote-topics", "voicenote-storage"}
    for name, job in jobs.items():
        assert name.endswith(suffix), f"{name}: not named for release {version}"
        assert len(name) <= 63  # a Job's name is also its pods' job-name label
        assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 7 * 86400, name
        for container in job["spec"]["template"]["spec"]["containers"]:
            image_tag = container["image"].rpartition(":")[2]
            assert image_tag == version  # the name changes whenever the image does


# --- workers wait for their topics -------------------------------------------------------------------

@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_kafka_client_deployment_waits_for_the_topic_catalog(overlay: str) -> None:
    objects = rendered(overlay)
    maps = _configmaps(objects)
    for name, deployment in _by_kind(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (main,) = pod["containers"]
        waits = [c for c in pod.get("initContainers", []) if c["args"][:2] == ["topics", "check"]]
        assert len(waits) == 1, f"{name} starts without waiting for its topics"
        (wait,) = waits
        assert wait["image"] == main["image"]  # no second image to pull
        parsed = build_parser().parse_args(wait["args"])  # the image's own CLI takes these arguments
        assert (parsed.action, parsed.wait > 0) == ("check", True)
        # It checks the catalog the main container uses: the same broker, security and partitions.
        assert _settings_env(container_env(wait, maps)) == {k: v for k, v in _settings_env(container_env(main, maps)).items()
                                                            if not k.startswith(("VOICENOTE_ENGINE__",))}
        assert {v["name"] for v in wait.get("env", []) if "valueFrom" in v} >= {
            "VOICENOTE_KAFKA__SASL_USERNAME", "VOICENOTE_KAFKA__SASL_PASSWORD"}
        assert wait["securityContext"]["readOnlyRootFilesystem"] is True
        assert "limits" in wait["resources"]


# --- the warm GPU worker -----------------------------------------------------------------------------

def test_consolidation_leaves_the_warm_gpu_worker_alone() -> None:
    deployments = _by_kind(rendered("eks"), "Deployment")
    warm = deployments["voicenote-worker-s1mini-warm"]["spec"]["template"]["metadata"]
    assert warm["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    spot = deployments["voicenote-worker-s1mini-spot"]["spec"]["template"]["metadata"]
    assert "karpenter.sh/do-not-disrupt" not in spot.get("annotations", {})  # overflow: consolidated when idle


# --- Ingress and the metrics port --------------------------------------------------------------------

def test_the_api_has_an_alb_ingress_and_its_metrics_are_on_another_port() -> None:
    objects = rendered("eks")
    maps = _configmaps(objects)
    (ingress,) = _by_kind(objects, "Ingress").values()
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/target-type"] == "ip"
    assert ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/healthcheck-path"] == "/readyz"
    assert "HTTPS" in json.loads(ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/listen-ports"])[0]
    api = _by_kind(objects, "Deployment")["voicenote-api"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    settings = settings_from(_settings_env(container_env(container, maps)))
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == urlsplit(settings.api.public_base_url).hostname
    service = _by_kind(objects, "Service")[rule["http"]["paths"][0]["backend"]["service"]["name"]]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    backends = {p["backend"]["service"]["port"]["name"] for p in rule["http"]["paths"]}
    assert backends == {"http"}
    assert ports["http"]["targetPort"] == "http"
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.api.metrics_port == container_ports["metrics"] != container_ports["http"]
    assert ports["metrics"]["targetPort"] == "metrics"
    monitor = _by_kind(objects, "ServiceMonitor")["voicenote-api"]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"}
    # dev keeps /metrics on the API's port, as before
    dev_api = _by_kind(rendered("dev"), "Deployment")["voicenote-api"]["spec"]["template"]["spec"]["containers"][0]
    assert settings_from(_settings_env(container_env(dev_api, _configmaps(rendered("dev"))))).api.metrics_port is None


# --- monitoring ---------------------------------------------------------------------------------------

def test_kube_prometheus_stack_selects_the_monitors_and_rules() -> None:
    objects = rendered("eks")
    for kind in ("PodMonitor", "ServiceMonitor", "PrometheusRule"):
        found = _by_kind(objects, kind)
        assert found, kind
        for name, obj in found.items():
            assert obj["metadata"]["labels"]["release"] == RELEASE_LABEL, f"{kind}/{name}"


def test_the_grafana_dashboard_ships_as_a_sidecar_configmap_from_the_one_json_file() -> None:
    objects = rendered("eks")
    source = ROOT / "ops" / "observability" / "grafana" / "dashboards" / "voicenote.json"
    dashboards = [c for c in _by_kind(objects, "ConfigMap").values()
                  if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert len(dashboards) == 1
    (dashboard,) = dashboards
    assert dashboard["data"] == {"voicenote.json": source.read_text()}
    assert dashboard["metadata"]["namespace"] == "voicenote"
    assert len(source.read_bytes()) < 200_000  # kubectl apply keeps a copy in an annotation (256 KiB limit)
    # one copy: no other JSON dashboard under k8s/
    assert not list((ROOT / "k8s").rglob("*.json"))


def test_lag_series_keep_the_consumer_group_their_worker_gives_them() -> None:
    """The workers label their lag series themselves (group, and model for synthesis: tests/unit/test_metrics.py);
    the monitor adds no `group` (it would shadow theirs as exported_group). Pods keep the label for selectors."""
    objects = rendered("eks")
    maps = _configmaps(objects)
    monitor = _by_kind(objects, "PodMonitor")["voicenote-workers"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert all(r.get("targetLabel") != "group" for r in endpoint.get("relabelings", []))
    selector = monitor["spec"]["selector"]["matchLabels"]
    for name, deployment in _by_kind(objects, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        if container["args"][0] != "worker":
            continue
        assert selector.items() <= labels.items(), f"{name} is not scraped"
        settings = settings_from(_settings_env(container_env(container, maps)))
        role = container["args"][1]
        if role == "synthesis":
            from tests.k8s_support import synthesis_route

            group = synthesis_route(settings)[1]
        else:
            group = f"{settings.worker.group_id}-{role}"
        assert labels["voicenote.io/group"] == group, name
