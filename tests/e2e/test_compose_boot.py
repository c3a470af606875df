"""docker-compose.yml, booted without Docker: each service of ours started natively as compose would.

For every service with a ``build`` (ours), the test takes its command and its environment from the
compose file as written (anchors, merges and ``${VAR:-default}`` resolved), maps the hostnames of the
backing services to the loopback ones from the fixtures (kafka -> Tansu, redis -> Redis, minio -> moto
S3), maps ports and volumes to free ones here, and sees the one-shot services exit 0 and the
long-running ones answer their compose healthcheck. Isolation overrides (topic prefix, Redis key
prefix, bucket) only rename; nothing else of the environment is touched. Then one job goes through the
API with the compose development key, its events framed with ids from the registry.

schema-registry is compose's own Karapace (image version, ``entrypoint`` and ``KARAPACE_*``) started
natively on the Tansu broker where a Karapace is installed (tests/karapace.py says where and why CI has
none); without one, tests/registry_standin.py, and ``test_the_schema_registry_service_is_real_karapace``
skips with the reason.

No Docker engine here: the images are not built; the services run from this checkout. No GPU here: the
``gpu`` profile's worker runs on the CPU (``S1MINI_DEVICE=cpu``) on a tiny random checkpoint
(``voicenote s1mini tiny-checkpoint``). Running as ``python -m ops.cli`` is what the images' ``voicenote`` entrypoint is.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ops.embedded import wait_ready
from ops.services import free_port
from tests.conftest import Backends
from tests.karapace import NativeKarapace, find_karapace, pinned_version
from tests.registry_standin import RegistryStandIn
from tests.stack import CHECKOUT_PATH

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DEV_TOKEN = "vn-dev-compose-only-change-me"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose's ``${VAR}`` / ``${VAR:-default}`` with an empty environment: the defaults as shipped."""
    return _VAR.sub(lambda m: m.group(2) or "", value)


def our_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


class ComposeHost:
    """Runs compose services as native processes with compose's hostnames mapped to loopback."""

    def __init__(self, backends: Backends, registry: str, unique: str, tmp: Path) -> None:
        self.registry = registry
        # http://localhost:9000 is MinIO's published port as the host sees it: presigned links name it.
        self.hosts = {"kafka:9092": backends.kafka, "redis://redis:6379": backends.redis.rsplit("/", 1)[0],
                      "http://minio:9000": backends.s3, "http://localhost:9000": self.public_s3(backends.s3),
                      "http://schema-registry:8081": registry}
        self.isolation = {"VOICENOTE_KAFKA__TOPIC_PREFIX": f"{unique}.", "VOICENOTE_REDIS__KEY_PREFIX": f"{unique}:",
                          "VOICENOTE_STORAGE__S3_BUCKET": unique}
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.api_port = free_port()

    @staticmethod
    def public_s3(endpoint: str) -> str:
        """The same S3 server by another name, so that a link shows which endpoint it was presigned for."""
        if "://127.0.0.1:" in endpoint:
            return endpoint.replace("://127.0.0.1:", "://localhost:")
        return endpoint.replace("://localhost:", "://127.0.0.1:")

    def environment(self, name: str, svc: dict[str, Any]) -> dict[str, str]:
        env = {k: interpolate(str(v)) for k, v in (svc.get("environment") or {}).items()}
        for key, value in env.items():
            for host, here in self.hosts.items():
                value = value.replace(host, here)
            env[key] = value
        env.update(self.isolation)
        # Ports: every container has its own; here they share one host.
        self.ports.setdefault(name, free_port() if name != "api" else self.api_port)
        if "VOICENOTE_WORKER__WEB_PORT" in env:
            env["VOICENOTE_WORKER__WEB_PORT"] = str(self.ports[name])
            env["VOICENOTE_WORKER__WEB_HOST"] = "127.0.0.1"
        env["VOICENOTE_API__PUBLIC_BASE_URL"] = f"http://127.0.0.1:{self.api_port}"
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            here = self.tmp / Path(source).name
            for key, value in env.items():
                if value.startswith(target):
                    env[key] = str(here) + value[len(target):]
        return env

    def command(self, name: str, svc: dict[str, Any]) -> list[str]:
        args = [str(a) for a in svc["command"]]
        if "--port" in args:
            args[args.index("--port") + 1] = str(self.ports[name])
        if "--host" in args:
            args[args.index("--host") + 1] = "127.0.0.1"
        return args

    def start(self, name: str, svc: dict[str, Any], *, override: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOICENOTE_")}
        env.update(self.environment(name, svc))
        env.update(override or {})
        env.update({"PYTHONPATH": CHECKOUT_PATH, "PYTHONUNBUFFERED": "1"})
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "ops.cli", *self.command(name, svc)], env=env, cwd=self.tmp,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def health_url(self, name: str, svc: dict[str, Any]) -> str:
        test = " ".join(svc["healthcheck"]["test"])
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)'", test)
        assert url, f"{name}: healthcheck without a URL: {test}"
        return f"http://127.0.0.1:{self.ports[name]}{url.group(2)}"

    def wait_healthy(self, name: str, svc: dict[str, Any], timeout: float = 240) -> None:
        url = self.health_url(name, svc)
        try:
            wait_ready(url, {name: self.procs[name]}, timeout, logs=f"{name}'s log", what=name)
        except SystemExit as exc:  # the runner's way of failing; here a test failure with the log
            raise AssertionError(f"{exc}; log:\n{self.log(name)}") from None

    def stop(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def registry_environment() -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in (compose()["services"]["schema-registry"].get("environment") or {}).items()}


def start_karapace(backends: Backends, unique: str, tmp: Path) -> NativeKarapace | None:
    """compose's schema-registry as real Karapace on the Tansu broker, or None where none is installed."""
    python, version = find_karapace()
    if python is None:
        return None
    service = compose()["services"]["schema-registry"]
    assert version == pinned_version(service), f"compose pins karapace {pinned_version(service)}, {python} has {version}"
    return NativeKarapace(python, service, registry_environment(), bootstrap=backends.kafka, unique=unique,
                          log=tmp / "schema-registry.log").start()


@pytest.fixture
def host(backends: Backends, unique: str, tmp_path: Path) -> Iterator[ComposeHost]:
    karapace = start_karapace(backends, unique, tmp_path)
    standin = None if karapace else RegistryStandIn().start()
    registry = karapace.url if karapace else standin.url  # type: ignore[union-attr]
    h = ComposeHost(backends, registry, unique, tmp_path)
    try:
        yield h
    finally:
        h.stop_all()
        if karapace:
            karapace.stop()
        if standin:
            standin.stop()


def test_the_schema_registry_service_is_real_karapace(backends: Backends, unique: str, tmp_path: Path) -> None:
    """compose's schema-registry, started from its entrypoint and environment, serves our codec's calls."""
    python, why = find_karapace()
    if python is None:
        pytest.skip(why)
    karapace = start_karapace(backends, unique, tmp_path)
    assert karapace is not None
    try:
        from schemas.codec import AvroCodec
        from schemas.events import SynthesisRequest
        from schemas.registry import HttpSchemaRegistry

        health = httpx.get(f"{karapace.url}/_health", timeout=5).json()
        assert health["karapace_version"] == pinned_version(compose()["services"]["schema-registry"])
        writer: AvroCodec[SynthesisRequest] = AvroCodec("SynthesisRequest", registry=HttpSchemaRegistry(karapace.url))
        reader: AvroCodec[SynthesisRequest] = AvroCodec("SynthesisRequest", registry=HttpSchemaRegistry(karapace.url))
        request = SynthesisRequest(job_id=unique, created_at=1_700_000_000_000, text="Hello through Karapace.")
        framed = writer.encode_event(request)
        assert framed[:1] == b"\x00"  # Confluent framing: the id is Karapace's
        schema_id = int.from_bytes(framed[1:5], "big")
        assert httpx.get(f"{karapace.url}/schemas/ids/{schema_id}", timeout=5).status_code == 200
        assert reader.decode_event(framed) == request  # a second client: the id resolved at Karapace
        assert "ai.voicenote.v1.SynthesisRequest" in httpx.get(f"{karapace.url}/subjects", timeout=5).json()
    finally:
        karapace.stop()


def test_every_service_of_ours_starts_from_the_compose_file_and_serves_a_job(host: ComposeHost) -> None:
    services = our_services()
    assert set(services) == {"topics", "storage", "api", "worker-synthesis", "worker-completion", "worker-webhooks",
                             "worker-synthesis-gpu"}
    # One-shot provisioning first, as the API's and workers' depends_on demand.
    for name in ("topics", "storage"):
        assert services[name]["command"][0] in ("topics", "storage")
        code = host.start(name, services[name]).wait(timeout=120)
        assert code == 0, f"{name} exited with {code}; log:\n{host.log(name)}"

    checkpoint = host.tmp / "models" / "openaudio-s1-mini"
    made = subprocess.run([sys.executable, "-m", "ops.cli", "s1mini", "tiny-checkpoint", str(checkpoint)], capture_output=True,
                          env={**os.environ, "PYTHONPATH": CHECKOUT_PATH}, timeout=120)
    assert made.returncode == 0, made.stderr.decode()
    assert "./models:/models:ro" in services["worker-synthesis-gpu"]["volumes"]
    for name in ("api", "worker-synthesis", "worker-completion", "worker-webhooks"):
        host.start(name, services[name])
    host.start("worker-synthesis-gpu", services["worker-synthesis-gpu"],
               override={"VOICENOTE_ENGINE__S1MINI_DEVICE": "cpu"})  # no GPU on this machine
    assert host.environment("worker-synthesis-gpu", services["worker-synthesis-gpu"])[
        "VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR"] == str(checkpoint)
    for name in ("api", "worker-synthesis", "worker-completion", "worker-webhooks", "worker-synthesis-gpu"):
        host.wait_healthy(name, services[name])
    for name in ("worker-synthesis", "worker-completion", "worker-webhooks", "worker-synthesis-gpu"):
        metrics = httpx.get(f"http://127.0.0.1:{host.ports[name]}/metrics", timeout=5)
        assert metrics.status_code == 200 and "voicenote_" in metrics.text, name
    # The job below is for the CPU voice; the GPU worker leaves first (before per-family routing it
    # shared the CPU worker's group, and a tiny random checkpoint speaks no real voice).
    host.stop("worker-synthesis-gpu")

    base = f"http://127.0.0.1:{host.api_port}"
    assert httpx.post(f"{base}/v1/audio/speech/async", json={"input": "hi"}, timeout=10).status_code == 401
    auth = {"Authorization": f"Bearer {DEV_TOKEN}"}
    accepted = httpx.post(f"{base}/v1/audio/speech/async", headers=auth, timeout=10,
                          json={"model": "tts-1", "input": "Hello from the compose file.", "voice": "alloy", "response_format": "wav"})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status_url"].startswith(base)
    deadline = time.monotonic() + 120
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = httpx.get(accepted.json()["status_url"], headers=auth, timeout=5).json()
        if job.get("status") in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    assert job.get("status") == "succeeded", json.dumps(job) + "\n" + host.log("worker-synthesis") + host.log("worker-completion")
    redirect = httpx.get(job["audio_url"], headers=auth, timeout=10)
    assert redirect.status_code in (302, 307), redirect.text
    public = host.hosts["http://localhost:9000"]
    assert public != host.hosts["http://minio:9000"] and redirect.headers["location"].startswith(public + "/")  # not minio:9000
    audio = httpx.get(job["audio_url"], headers=auth, timeout=10, follow_redirects=True)
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF"
    latency = httpx.get(f"http://127.0.0.1:{host.ports['worker-completion']}/metrics", timeout=5).text
    assert 'voicenote_job_latency_seconds_count{status="succeeded"} 1.0' in latency
    # The events went through the registry: the API registered the request's schema, the workers the rest.
    subjects = set(httpx.get(f"{host.registry}/subjects", timeout=5).json())
    assert {"ai.voicenote.v1.SynthesisRequest", "ai.voicenote.v1.SynthesisResult", "ai.voicenote.v1.JobCompletion"} <= subjects, subjects
