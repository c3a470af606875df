"""Starting the API and workers as real processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ops.services import free_port
from voicenote.settings import Settings, to_env

REPO = Path(__file__).resolve().parent.parent
# What a child process needs on its path to run this checkout: the server's packages and the client's source root
# (voicenote.client imports voicenote_client, clients/python/src), as the editable install maps them.
CHECKOUT_PATH = os.pathsep.join((str(REPO), str(REPO / "clients" / "python" / "src")))


@dataclass
class Stack:
    settings: Settings
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        # Fixed before any process starts: workers put the API's URL into completion events (audio_url).
        self.api_port = self.api_port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOICENOTE_")}
        env.update(to_env(self.settings))
        if not self.settings.api.keys:  # without keys the stack runs anonymous, explicitly, as the API demands
            env["VOICENOTE_API__ALLOW_ANONYMOUS"] = "true"
        env.update({"PYTHONPATH": CHECKOUT_PATH, "PYTHONUNBUFFERED": "1",
                    "VOICENOTE_API__PORT": str(self.api_port), "VOICENOTE_API__PUBLIC_BASE_URL": self.base_url})
        env.update(self.extra_env)
        return env

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``voicenote <args>``; ``env`` overrides the stack's environment for this process only."""
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "ops.cli", *args], env={**self.env(), **(env or {})}, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start_api(self) -> None:
        self.api_port = self.api_port or free_port()
        self.start("api", "api")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"API not ready; log:\n{self.log('api')}")

    def start_worker(self, role: str, name: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.start(name or f"worker-{role}", "worker", role, "--web-port", str(free_port()), env=env)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None and proc.returncode != 0 and not getattr(proc, "expected_exit", False):
                raise AssertionError(f"{name} exited with {proc.returncode}; log:\n{self.log(name)[-4000:]}")

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        proc = self.procs[name]
        proc.expected_exit = True  # type: ignore[attr-defined]
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout)

    def stop_all(self, timeout: float = 20) -> None:
        """SIGTERM to every process at once, then up to ``timeout`` for all of them together; a process still
        running then is killed. (One after another, each shutdown's waits on the broker added up.)"""
        for proc in self.procs.values():
            proc.expected_exit = True  # type: ignore[attr-defined]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wait_job(self, job_id: str, timeout: float = 60, terminal: tuple[str, ...] = ("succeeded", "failed", "cancelled")) -> dict:
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            self.check_alive()
            resp = httpx.get(f"{self.base_url}/v1/jobs/{job_id}", timeout=5)
            if resp.status_code == 200:
                body = resp.json()
                if body["status"] in terminal:
                    return body
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not finished in {timeout}s (last: {body}); worker log:\n{self.log('worker-synthesis')[-3000:]}")
