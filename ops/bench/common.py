"""What every benchmark shares: the machine's description, percentiles, stopping its processes."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voicenote.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def machine(libraries: Iterable[str] = (), note: str | None = None) -> dict[str, object]:
    """CPU model, cores, memory, OS and Python, plus the versions of ``libraries``; written with each result."""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    libs: dict[str, str | None] = {}
    for lib in libraries:
        try:
            libs[lib] = version(lib)
        except PackageNotFoundError:
            libs[lib] = None
    described: dict[str, object] = {
        "cpu": cpu, "logical_cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": platform.platform(), "python": platform.python_version(),
    }
    if libs:
        described["libraries"] = libs
    if note:
        described["note"] = note
    return described


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank); NaN for no values."""
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """SIGTERM every process, then wait for each (killing what outlives ``timeout``)."""
    procs = list(procs)
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds per named process over a stretch of a benchmark: where a 2-core budget goes."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._start = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def used(self) -> dict[str, float]:
        return {name: round(cpu_seconds(pid) - self._start[name], 3) for name, pid in self._pids.items()}


def calibration_ms(repeat: int = 5) -> float:
    """Milliseconds a fixed pure-Python workload takes (the best of ``repeat``): how fast this shared
    machine is right now. Written beside figures so runs taken at different moments can be told apart."""
    import time

    def work() -> int:
        total = 0
        for i in range(200_000):
            total += (i * i) % 7
        return total

    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return round(1000 * best, 2)


def stack_settings(tag: str, bootstrap: str, redis_url: str, data_dir: Path) -> Settings:
    """Settings for a benchmark's own stack: topics, keys and group named after ``tag``, audio under ``data_dir``."""
    from voicenote.settings import KafkaSettings, RedisSettings, Settings, StorageSettings

    return Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"{tag}.", request_partitions=4, partitions=2),
        redis=RedisSettings(url=redis_url, key_prefix=f"{tag}:"),
        storage=StorageSettings(local_dir=data_dir / "audio"),
        worker={"group_id": tag},  # type: ignore[arg-type]
    )


def start_api_stack(settings: Settings, log_dir: Path, *, api_port: int, synth_port: int,
                    extra_env: dict[str, str] | None = None) -> dict[str, subprocess.Popen[bytes]]:
    """Start a synthesis worker, a completion worker and an anonymous API on ``settings`` as processes.

    The caller waits for ``/readyz`` (``ops.embedded.wait_ready``) inside its own try/finally, so the
    processes are stopped whatever happens.
    """
    import sys

    from ops.services import free_port
    from voicenote.settings import to_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICENOTE_")}
    env.update(to_env(settings))
    env.update({"PYTHONPATH": str(REPO), "VOICENOTE_API__PORT": str(api_port), "VOICENOTE_API__ALLOW_ANONYMOUS": "true",
                "VOICENOTE_API__PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}", **(extra_env or {})})
    procs = {}
    for name, cmd in (("synthesis", ["worker", "synthesis", "--web-port", str(synth_port)]),
                      ("completion", ["worker", "completion", "--web-port", str(free_port())]), ("api", ["api"])):
        log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it open
        procs[name] = subprocess.Popen([sys.executable, "-m", "ops.cli", *cmd], env=env, cwd=REPO, stdout=log,
                                       stderr=subprocess.STDOUT)
    return procs


def readable(bootstrap: str, topic: str, partitions: int, timeout: float = 60) -> list[bytes]:
    """Every record value of ``topic``, read from the start to the end of each partition (a fresh group)."""
    import time

    from voicenote.kafka import TopicPartition
    from voicenote.kafka import consumer as new_consumer
    from voicenote.settings import KafkaSettings

    consumer = new_consumer(KafkaSettings(bootstrap_servers=bootstrap), f"read-{time.monotonic_ns()}",
                            {"enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values: list[bytes] = []
    ended: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(ended) < partitions and time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is None:
                continue
            if msg.error():
                ended.add(msg.partition() or 0)
            else:
                values.append(msg.value() or b"")
    finally:
        consumer.close()
    return values
