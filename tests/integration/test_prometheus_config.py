"""compose's Prometheus config, loaded by Prometheus itself: the GPU worker's absent profile is no down target.

Prometheus from Debian's package (`apt-get install prometheus`, as `make dashboard` uses); skipped, and
said so, where it is not installed. No compose network here: none of the service names resolves, which
is what the GPU worker's name does without `--profile gpu`. The static targets (services every
`docker compose up` starts) are then down, as they should be while missing; the GPU job has no target.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ops.services import free_port
from tests.k8s_support import ROOT

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
CONFIG = ROOT / "ops" / "observability" / "prometheus.yml"
ALERTS = ROOT / "ops" / "observability" / "alerts.yml"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    if PROMETHEUS is None:
        pytest.skip("no Prometheus on PATH (Debian: apt-get install prometheus)")
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]  # compose mounts alerts.yml there
    config["rule_files"] = [str(ALERTS)]
    config["global"]["evaluation_interval"] = "1s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_without_the_gpu_profile_its_worker_is_no_target_while_missing_services_are_down(prometheus: str) -> None:
    deadline = time.monotonic() + 60
    down: list[dict[str, Any]] = []
    while time.monotonic() < deadline:  # two scrape intervals and a rule evaluation
        down = _query(prometheus, 'up{job=~"voicenote.*"} == 0')
        if len(down) == 4:
            break
        time.sleep(1)
    assert sorted(r["metric"]["instance"] for r in down) == [
        "api:8000", "worker-completion:6066", "worker-synthesis:6066", "worker-webhooks:6066"]
    pools = httpx.get(f"{prometheus}/api/v1/scrape_pools", timeout=5).json()["data"]["scrapePools"]
    assert set(pools) == {"voicenote-api", "voicenote-workers", "voicenote-workers-gpu"}  # the GPU job is loaded, its discovery ran
    targets = httpx.get(f"{prometheus}/api/v1/targets", params={"state": "any"}, timeout=5).json()["data"]
    assert not [t for t in targets["activeTargets"] + targets["droppedTargets"]
                if t.get("labels", t.get("discoveredLabels", {})).get("job") == "voicenote-workers-gpu"]
    assert _query(prometheus, 'up{job="voicenote-workers-gpu"}') == []
    # The alert's own expression, as loaded from alerts.yml: the missing GPU worker is not among its series.
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    target_down = next(r for g in rules for r in g["rules"] if r["name"] == "VoicenoteTargetDown")
    assert {a["labels"]["instance"] for a in target_down.get("alerts", [])} <= {r["metric"]["instance"] for r in down}
    assert not [a for a in target_down.get("alerts", []) if "gpu" in a["labels"]["instance"]]
