"""Fault scenarios over the real processes, shared by the fault tests (a few dozen jobs) and
``ops/bench/faults.py`` (about 200): submit jobs at a steady pace, break something mid-run, repair it,
then account for every accepted job through ``GET /v1/jobs`` and the completion topic."""

from __future__ import annotations

import base64
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from schemas.codec import Codecs
from tests.stack import Stack
from voicenote.kafka import read_to_end

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Tally:
    """What a scenario did to the jobs it submitted."""

    scenario: str
    submitted: int = 0
    accepted: list[str] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)  # HTTP status of submissions not accepted
    final: dict[str, str] = field(default_factory=dict)  # job id -> status seen through GET /v1/jobs
    completions: Counter[str] = field(default_factory=Counter)  # job id -> completion events
    outcomes: dict[str, set[str]] = field(default_factory=dict)  # job id -> distinct completion statuses
    seconds: float = 0.0
    webhook_url: str | None = None
    deliveries: Counter[str] = field(default_factory=Counter)  # webhook-id -> deliveries received

    @property
    def succeeded(self) -> int:
        return sum(1 for s in self.final.values() if s == "succeeded")

    @property
    def failed(self) -> int:
        return sum(1 for s in self.final.values() if s in ("failed", "cancelled"))

    @property
    def stuck(self) -> int:
        """Accepted, visible, but not final by the end of the wait."""
        return sum(1 for j in self.accepted if j in self.final and self.final[j] not in TERMINAL)

    @property
    def lost(self) -> int:
        """Accepted but unknown to the API, or with no completion event at all."""
        return sum(1 for j in self.accepted if j not in self.final or self.completions[j] == 0)

    @property
    def double_outcomes(self) -> int:
        """Jobs whose completion events disagree (succeeded once, failed another time)."""
        return sum(1 for j in self.accepted if len(self.outcomes.get(j, ())) > 1)

    @property
    def duplicate_completions(self) -> int:
        """Extra completion events of the same outcome (at-least-once; consumers dedupe by job id)."""
        return sum(max(0, n - 1) for n in self.completions.values())

    @property
    def webhook_missing(self) -> int:
        return sum(1 for j in self.accepted if self.deliveries[f"msg_{j}"] == 0) if self.webhook_url else 0

    @property
    def webhook_duplicates(self) -> int:
        return sum(max(0, n - 1) for n in self.deliveries.values())

    def row(self) -> dict[str, Any]:
        return {"webhook_missing": self.webhook_missing, "webhook_duplicates": self.webhook_duplicates, **{"scenario": self.scenario, "accepted": len(self.accepted), "refused": sum(self.refused.values()),
                "succeeded": self.succeeded, "failed": self.failed, "lost": self.lost, "stuck": self.stuck,
                "double_outcomes": self.double_outcomes, "duplicate_completions": self.duplicate_completions,
                "seconds": round(self.seconds, 1)}}


def submit(stack: Stack, tally: Tally, n: int, *, pace: float = 0.0, start: int = 0) -> None:
    """``n`` async submissions; a refusal (503 during an outage) is counted, never retried blindly."""
    for i in range(start, start + n):
        tally.submitted += 1
        body: dict[str, Any] = {"input": f"Fault note number {i}.", "response_format": "wav"}
        if tally.webhook_url:
            body["webhook_url"] = tally.webhook_url
        try:
            resp = httpx.post(f"{stack.base_url}/v1/audio/speech/async", json=body, timeout=15)
        except httpx.HTTPError:
            tally.refused[0] += 1
            continue
        if resp.status_code == 202:
            tally.accepted.append(resp.json()["job_id"])
        else:
            tally.refused[resp.status_code] += 1
        if pace:
            time.sleep(pace)


def submit_in_background(stack: Stack, tally: Tally, n: int, pace: float, start: int = 0) -> threading.Thread:
    thread = threading.Thread(target=submit, args=(stack, tally, n), kwargs={"pace": pace, "start": start}, daemon=True)
    thread.start()
    return thread


def statuses(stack: Stack, ids: list[str]) -> dict[str, str]:
    out = {}
    for job_id in ids:
        try:
            resp = httpx.get(f"{stack.base_url}/v1/jobs/{job_id}", timeout=5)
        except httpx.HTTPError:
            continue
        if resp.status_code == 200:
            out[job_id] = resp.json()["status"]
    return out


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, stack: Stack | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    logs = "" if stack is None else "\n".join(f"--- {n}\n{stack.log(n)[-2500:]}" for n in stack.procs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def wait_some_done(stack: Stack, tally: Tally, at_least: int, timeout: float = 90) -> None:
    wait_until(lambda: sum(1 for s in statuses(stack, tally.accepted).values() if s in TERMINAL) >= at_least,
               timeout, f"{at_least} finished jobs", stack)


def settle(stack: Stack, tally: Tally, timeout: float) -> None:
    """Wait until every accepted job is final through the API (or the timeout), then read the completions."""
    def all_final() -> bool:
        tally.final = statuses(stack, tally.accepted)
        return len(tally.final) == len(tally.accepted) and all(s in TERMINAL for s in tally.final.values())

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all_final():
        time.sleep(0.5)
    stack.check_alive()  # a worker that died unnoticed (say, its port taken) would pass for a slow one
    for record in read_completions(stack):
        tally.completions[record["job_id"]] += 1
        tally.outcomes.setdefault(record["job_id"], set()).add(record["status"])


def read_completions(stack: Stack, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Every completion event on the topic, read to the partitions' ends as they were when reading began
    (voicenote.kafka.read_to_end, no group to join): the reader this used to have stopped after 4 s without
    a record, which on a loaded machine could be before its group's first assignment (jobs read as lost)."""
    s = stack.settings
    codecs = Codecs()
    records = read_to_end(s.kafka, s.kafka.catalog().completions.name, timeout=timeout, group_prefix="fault-check")
    return [codecs.completion.decode(m.value()) for m in records]


def fast_null_engine(stack: Stack) -> None:
    # A zero-cost voice that takes a quarter second per batch: there is work in hand when the fault hits.
    stack.extra_env.update({"VOICENOTE_ENGINE__KIND": "null", "VOICENOTE_ENGINE__NULL_BATCH_SECONDS": "0.25",
                            "VOICENOTE_WORKER__MAX_BATCH": "4", "VOICENOTE_WORKER__PROJECTION_CHECK_SECONDS": "1",
                            "VOICENOTE_WORKER__RETRY_MAX_SECONDS": "1"})


def kill_and_restart(stack: Stack, name: str, role: str) -> str:
    """kill -9 the worker ``name`` and start a new one of ``role``; returns the new one's name."""
    stack.stop(name, signal.SIGKILL, timeout=30)
    new_name = f"{name}-after-kill-{time.monotonic_ns()}"
    stack.start_worker(role, name=new_name)  # its own --web-port: a fixed one may be taken by another stack
    return new_name


class Supervise:
    """Start again any worker of ``stack`` that exits, as ``voicenote run``'s supervisor and the kubelet do (at once
    here); each exit is kept as (name, code). Workers stopped through ``Stack.stop`` are left alone."""

    def __init__(self, stack: Stack, interval: float = 0.5) -> None:
        self.stack = stack
        self.exits: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for name, proc in list(self.stack.procs.items()):
                if not name.startswith("worker-") or getattr(proc, "expected_exit", False) or proc.poll() is None:
                    continue
                proc.expected_exit = True  # type: ignore[attr-defined]  # seen and handled: check_alive passes it
                self.exits.append((name, proc.returncode))
                role = name.removeprefix("worker-").split("-")[0]
                self.stack.start_worker(role, name=f"worker-{role}-restart-{len(self.exits)}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def error_codes(stack: Stack, ids: list[str]) -> dict[str, str | None]:
    """Each failed job's ``error.code`` through GET /v1/jobs."""
    out: dict[str, str | None] = {}
    for job_id in ids:
        resp = httpx.get(f"{stack.base_url}/v1/jobs/{job_id}", timeout=5)
        if resp.status_code == 200 and resp.json()["status"] == "failed":
            out[job_id] = (resp.json().get("error") or {}).get("code")
    return out


class WebhookReceiver:
    """A local receiver that answers 200 and counts deliveries per ``webhook-id``."""

    def __init__(self, tally: Tally) -> None:
        counts = tally.deliveries
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    counts[self.headers.get("webhook-id", "?")] += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def with_webhooks(stack: Stack) -> None:
    """The webhook worker may call the loopback receiver, signing with a throwaway secret."""
    stack.extra_env.update({"VOICENOTE_WEBHOOKS__SIGNING_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
                            "VOICENOTE_WEBHOOKS__ALLOW_HOSTS": '["127.0.0.1"]'})


def wait_deliveries(tally: Tally, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and tally.webhook_missing:
        time.sleep(0.3)
