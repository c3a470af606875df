"""`voicenote run` (what `make run` starts) keeps accepted work across a stop and a start: requests
accepted while the synthesis worker cannot run are done by the next run on the same data directory,
because the broker's topics and offsets live in <data-dir>/broker on disk (ops.diskstore under Tansu); and a
burst of notes through that default storage all complete (ops.diskstore once stalled on one, when every fetch
waited 10 ms)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from ops.embedded import wait_ready
from ops.services import free_port, redis_answers
from tests.conftest import _forget_redis_keys
from tests.stack import CHECKOUT_PATH
from voicenote.kafka import admin_client
from voicenote.settings import KafkaSettings

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Run:
    def __init__(self, data_dir: Path, port: int, env: dict[str, str]) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.logs = data_dir / "log"
        log_path = data_dir.parent / f"run-{time.monotonic_ns()}.log"
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "run", "--data-dir", str(data_dir), "--port", str(port)],
                                     cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        # When the run tells the user to try it (read every 50 ms: the clock of the "Try it" line).
        self.try_it_at: datetime | None = None
        deadline = time.monotonic() + 180
        while self.proc.poll() is None and time.monotonic() < deadline:
            if b"Try it" in log_path.read_bytes():
                self.try_it_at = datetime.now()
                break
            time.sleep(0.05)
        try:
            wait_ready(f"{self.base}/readyz", {"voicenote run": self.proc}, 180, logs=str(data_dir / "log"), what="voicenote run")
        except SystemExit as exc:
            raise AssertionError(str(exc)) from None

    def joined_at(self, worker: str, group: str) -> datetime:
        """When the worker's consumer got its partitions (aiokafka's log line, local time like ours)."""
        for line in (self.logs / f"worker-{worker}.log").read_text(errors="replace").splitlines():
            if f"Successfully synced group {group}" in line:
                return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
        raise AssertionError(f"the {worker} worker never joined {group}")

    def child(self, needle: str) -> int:
        pids = [p for p in descendants(self.proc.pid) if needle in cmdline(p)]
        assert len(pids) == 1, (needle, pids)
        return pids[0]

    def log_bytes(self) -> bytes:
        self.log.flush()
        return Path(self.log.name).read_bytes()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(90) == 0
        self.log.close()


@pytest.fixture
def run_env() -> Iterator[dict[str, str]]:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICENOTE_")}
    env.update({"VOICENOTE_REDIS__KEY_PREFIX": prefix, "VOICENOTE_ENGINE__KIND": "null", "PYTHONPATH": CHECKOUT_PATH})
    yield env
    if redis_answers(LOCAL_REDIS):  # the run used it (else a Valkey of its own, gone with it)
        _forget_redis_keys(LOCAL_REDIS, f"{prefix}*")


def test_requests_accepted_before_a_stop_are_done_by_the_next_run(tmp_path: Path, run_env: dict[str, str]) -> None:
    data_dir, port = tmp_path / "var", free_port()
    first = Run(data_dir, port, run_env)
    try:
        synthesis = first.child("worker synthesis")
        os.kill(synthesis, signal.SIGSTOP)  # nothing gets synthesized from here on
        job_ids = []
        for i in range(3):
            resp = httpx.post(f"{first.base}/v1/audio/speech/async", json={"input": f"Kept across runs, note {i}.", "response_format": "wav"}, timeout=10)
            assert resp.status_code == 202, resp.text
            job_ids.append(resp.json()["job_id"])
        time.sleep(1)
        assert {httpx.get(f"{first.base}/v1/jobs/{j}", timeout=5).json()["status"] for j in job_ids} == {"queued"}
        os.kill(synthesis, signal.SIGKILL)  # it dies with the run, before doing them
    finally:
        first.stop()
    assert (data_dir / "broker" / "objects.sqlite3").stat().st_size > 0  # the default storage: ops.diskstore
    assert not (data_dir / "broker" / "seaweedfs").exists()

    second = Run(data_dir, port, run_env)
    try:
        deadline = time.monotonic() + 120
        statuses: dict[str, str] = {}
        while time.monotonic() < deadline:
            statuses = {j: httpx.get(f"{second.base}/v1/jobs/{j}", timeout=5).json().get("status", "?") for j in job_ids}
            if set(statuses.values()) == {"succeeded"}:
                break
            time.sleep(1)
        assert set(statuses.values()) == {"succeeded"}, statuses
        audio = httpx.get(f"{second.base}/v1/jobs/{job_ids[0]}/audio", timeout=10, follow_redirects=True)
        assert audio.status_code == 200 and audio.content[:4] == b"RIFF"
    finally:
        second.stop()


BURST = 300


def test_a_burst_through_the_default_broker_storage_completes_every_job(tmp_path: Path, run_env: dict[str, str]) -> None:
    """300 notes submitted at once to the default stack (ops.diskstore under the broker, null engine: the broker's
    hops are what is tried) all succeed; with 10 ms fetch waits, that storage once stopped consuming after such a
    burst."""
    run = Run(tmp_path / "var", free_port(), run_env)
    try:
        with httpx.Client(base_url=run.base, timeout=30) as client:
            job_ids = []
            for i in range(BURST):
                resp = client.post("/v1/audio/speech/async", json={"input": f"Burst note {i}.", "response_format": "wav"})
                while resp.status_code == 429:  # the API's token bucket (50/s): wait as it says
                    time.sleep(float(resp.headers.get("retry-after", "1")))
                    resp = client.post("/v1/audio/speech/async", json={"input": f"Burst note {i}.", "response_format": "wav"})
                assert resp.status_code == 202, resp.text
                job_ids.append(resp.json()["job_id"])
            deadline = time.monotonic() + 240
            open_ids = set(job_ids)
            statuses: dict[str, str] = {}
            while open_ids and time.monotonic() < deadline:
                for job in list(open_ids):
                    statuses[job] = client.get(f"/v1/jobs/{job}").json().get("status", "?")
                    if statuses[job] in ("succeeded", "failed", "cancelled"):
                        open_ids.discard(job)
                time.sleep(1)
        counts = {s: sum(1 for v in statuses.values() if v == s) for s in set(statuses.values())}
        assert counts == {"succeeded": BURST}, counts
    finally:
        run.stop()


def test_run_uses_the_configured_redis_and_its_children_die_with_it(tmp_path: Path, run_env: dict[str, str]) -> None:
    # Regression: `voicenote run` took redis://127.0.0.1:6379/0 whenever it answered, whatever
    # VOICENOTE_REDIS__URL said; and `voicenote run | tee log` + Ctrl-C left the broker and its storage
    # server running without a parent.
    import redis

    if not redis_answers(LOCAL_REDIS):
        pytest.skip("needs the Redis on 127.0.0.1:6379")
    db_url = "redis://127.0.0.1:6379/13"
    prefix = run_env["VOICENOTE_REDIS__KEY_PREFIX"]
    # Regression: the topics were made from a bare KafkaSettings, which reads no environment: 24 request partitions,
    # whatever the children were told (and embedded.EMBEDDED_KAFKA_ENV's 4 never took effect).
    kafka_env = {"VOICENOTE_KAFKA__REQUEST_PARTITIONS": "3", "VOICENOTE_KAFKA__PARTITIONS": "2"}
    run = Run(tmp_path / "var", free_port(), {**run_env, "VOICENOTE_REDIS__URL": db_url, **kafka_env})
    children: list[int] = []
    try:
        # "Try it" is printed only once both workers that a first request needs got their partitions (#24).
        assert run.try_it_at is not None
        assert run.joined_at("synthesis", "voicenote-synthesis") <= run.try_it_at
        assert run.joined_at("completion", "voicenote-completion") <= run.try_it_at
        bootstrap = re.search(rb"Tansu on (\S+)", run.log_bytes())
        assert bootstrap, run.log_bytes()
        settings = KafkaSettings(bootstrap_servers=bootstrap.group(1).decode())
        topics = admin_client(settings).list_topics(timeout=10).topics
        catalog = KafkaSettings(request_partitions=3, partitions=2).catalog()
        assert {s.name: len(topics[s.name].partitions) for s in catalog.all()} == {s.name: s.partitions for s in catalog.all()}
        assert {len(topics[s.name].partitions) for s in catalog.all() if "requests" in s.name} == {3}
        resp = httpx.post(f"{run.base}/v1/audio/speech/async", json={"input": "Which Redis?", "response_format": "wav"}, timeout=10)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{run.base}/v1/jobs/{job_id}", timeout=5).json().get("status") != "succeeded":
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.5)
        in_db = redis.Redis.from_url(db_url)
        in_default = redis.Redis.from_url(LOCAL_REDIS)
        assert any(job_id.encode() in key for key in in_db.scan_iter(match=f"{prefix}*"))
        assert list(in_default.scan_iter(match=f"{prefix}*")) == []

        children = descendants(run.proc.pid)
        expected = {"tansu", "ops.diskstore", "worker synthesis", "worker completion", "worker webhooks", " api"}
        assert {name for name in expected if any(name in cmdline(p) for p in children)} == expected
        run.proc.send_signal(signal.SIGKILL)  # it cannot stop them itself
        run.proc.wait(10)
        deadline = time.monotonic() + 10
        while [p for p in children if cmdline(p)] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [cmdline(p) for p in children if cmdline(p)] == []
    finally:
        if run.proc.poll() is None:
            run.stop()
        for pid in children:
            if cmdline(pid):
                os.kill(pid, signal.SIGKILL)
        run.log.close()
        _forget_redis_keys(db_url, f"{prefix}*")


def test_the_readme_s1mini_snippet_serves_s1mini_on_the_tiny_checkpoint(tmp_path: Path, run_env: dict[str, str]) -> None:
    """README.md's "Try the S1-mini path without weights", as written there: its command, settings and request."""
    pytest.importorskip("torch")
    pytest.importorskip("tiktoken")  # the checkpoint's BPE tokenizer needs it
    readme = (REPO / "README.md").read_text()
    blocks = [part.split("```")[0] for part in readme.split("```sh")[1:]]
    snippet = next(block for block in blocks if "s1mini tiny-checkpoint" in block)
    command = next(line for line in snippet.splitlines() if "s1mini tiny-checkpoint" in line)
    where = command.split("s1mini tiny-checkpoint", 1)[1].split()[0]
    checkpoint = tmp_path / "tiny-s1mini"
    made = subprocess.run([sys.executable, "-m", "ops.cli", "s1mini", "tiny-checkpoint", str(checkpoint)], cwd=REPO, env=run_env,
                          capture_output=True, timeout=120)
    assert made.returncode == 0, made.stderr.decode()
    settings = dict(re.findall(r"(VOICENOTE_\w+)=(\S+)", snippet))
    assert settings.pop("VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR") == where and settings  # the directory written
    body = json.loads(re.search(r"-d '(\{.*\})'", snippet).group(1))  # type: ignore[union-attr]
    assert body["model"] == "s1-mini"

    run = Run(tmp_path / "var", free_port(), {**run_env, **settings, "VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR": str(checkpoint)})
    try:
        resp = httpx.post(f"{run.base}/v1/audio/speech/async", json=body, timeout=10)
        assert resp.status_code == 202, resp.text
        job_id, job = resp.json()["job_id"], {}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            job = httpx.get(f"{run.base}/v1/jobs/{job_id}", timeout=5).json()
            if job.get("status") in ("succeeded", "failed"):
                break
            time.sleep(0.5)
        log = (tmp_path / "var" / "log" / "worker-s1mini.log").read_text(errors="replace")[-3000:]
        assert job.get("status") == "succeeded", f"{job}\n{log}"
        assert job["model"] == "s1-mini"
        audio = httpx.get(f"{run.base}/v1/jobs/{job_id}/audio", timeout=10, follow_redirects=True)
        assert audio.status_code == 200 and audio.content[:4] == b"RIFF" and len(audio.content) > 44
    finally:
        run.stop()
