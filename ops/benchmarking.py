"""What every benchmark shares: the machine's description, percentiles, stopping its processes."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


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
