"""Readiness that watches progress (issue 22), on a real synthesis worker process, broker and Redis.

The broker is paused with SIGSTOP for longer than the session timeout while the worker has work in
hand: its /readyz must turn not-ready naming ``progress`` (not only ``kafka``), and ready again once
its group's committed offsets move after the broker is resumed. Past the longer bound, a worker whose
engine never finishes exits with code 75 and says why. Each test runs its own broker, so pausing it
disturbs no other test.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.services import TansuBroker, free_port
from stream_workers.runtime.progress import STALL_EXIT_CODE, GroupOffsets
from tests.stack import Stack
from voicenote.client import VoicenoteClient
from voicenote.kafka import ensure_topics
from voicenote.models import family_of, synthesis_group
from voicenote.settings import EngineKind, Settings


@pytest.fixture
def own_broker(stack: Stack, tmp_path: Path) -> Iterator[TansuBroker]:
    broker = TansuBroker(log_path=tmp_path / "tansu.log").start()
    try:
        yield broker
    finally:
        if broker.pid is not None:
            os.kill(broker.pid, signal.SIGCONT)  # a paused broker does not stop on SIGTERM
        # The workers go first, while their broker still answers: stopped after it, each spent its shutdown
        # waiting on it (25-30 s of teardown a test).
        stack.stop_all()
        broker.stop()


def eventually(predicate: Callable[[], Any], timeout: float, what: str, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s; worker log:\n{stack.log('worker')[-4000:]}")


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
    except httpx.HTTPError:
        return 0, {}
    return resp.status_code, resp.json()


def _on(stack: Stack, broker: TansuBroker, **worker: Any) -> tuple[Settings, str]:
    s = stack.settings
    settings = s.model_copy(update={
        "kafka": s.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap}),
        "engine": s.engine.model_copy(update={"kind": EngineKind.null}),
        "worker": s.worker.model_copy(update={"progress_check_seconds": 0.5, "broker_check_seconds": 0.5, **worker}),
    })
    stack.settings = settings
    ensure_topics(settings.kafka, settings.kafka.catalog().all())
    return settings, synthesis_group(settings.worker.group_id, family_of(EngineKind.null))


def publish(settings: Settings, count: int) -> None:
    with VoicenoteClient(settings.kafka) as client:
        for n in range(count):
            client.publish(f"Note number {n}.")
            client.flush()  # one record per produce batch: Tansu's listed ends count batches (docs/client.md)


def test_a_broker_paused_past_the_session_timeout_makes_readyz_wait_on_progress_until_offsets_move(
        stack: Stack, own_broker: TansuBroker) -> None:
    # stall bound 3 s, over the tests' 2 s session timeout; no exit within this test
    settings, group = _on(stack, own_broker, stall_seconds=3.0, stall_exit_seconds=600.0, max_batch=2)
    port = free_port()
    stack.start("worker", "worker", "synthesis", "--web-port", str(port),
                env={"VOICENOTE_ENGINE__NULL_BATCH_SECONDS": "0.4"})
    eventually(lambda: readyz(port)[0] == 200, 90, "the worker was not ready", stack)
    publish(settings, 40)  # 20 batches of 0.4 s: about 8 s of work, so the group has lag when the broker stops
    reader = GroupOffsets(settings.kafka, group)
    try:
        eventually(lambda: sum(o.committed for o in reader.read([(settings.kafka.catalog().requests.name, p) for p in
                                                                 range(settings.kafka.request_partitions)]).values()) > 0,
                   60, "the worker committed nothing", stack)

        assert own_broker.pid is not None
        os.kill(own_broker.pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        try:
            status, body = eventually(lambda: (r := readyz(port))[0] == 503 and "progress" in r[1]["waiting_on"] and r,
                                      30, "readyz never said it waits on progress", stack)
            time.sleep(max(0.0, paused_at + 6 - time.monotonic()))  # paused 3 x the session timeout in all
        finally:
            os.kill(own_broker.pid, signal.SIGCONT)
        reason = body["waiting_on"]["progress"]
        assert not body["ready"] and reason["seconds"] >= 3
        assert group in reason["error"] and "no committed offset moved" in reason["error"] and "behind" in reason["error"]

        status, body = eventually(lambda: (r := readyz(port))[0] == 200 and r, 90,
                                  "readyz did not turn ready once the broker was resumed", stack)
        assert body["waiting_on"] == {}
        # Ready again because the group progresses: every request is consumed in the end.
        topic = settings.kafka.catalog().requests.name
        eventually(lambda: all(o.lag == 0 for o in reader.read([(topic, p) for p in range(settings.kafka.request_partitions)]).values()),
                   90, "the group did not catch up after the broker was resumed", stack)
        caught_up = f'voicenote_seconds_since_progress{{group="{group}"}} 0.0'
        eventually(lambda: caught_up in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text, 10,
                   "the gauge did not read 0 once nothing was behind", stack)  # the watch's next round sees it
    finally:
        reader.close()


def test_past_the_longer_bound_a_worker_that_makes_no_progress_exits_to_be_restarted(
        stack: Stack, own_broker: TansuBroker) -> None:
    settings, group = _on(stack, own_broker, stall_seconds=2.0, stall_exit_seconds=8.0)
    port = free_port()
    # An engine that never finishes its batch: the broker answers, and nothing is ever committed.
    proc = stack.start("worker", "worker", "synthesis", "--web-port", str(port),
                       env={"VOICENOTE_ENGINE__NULL_BATCH_SECONDS": "3600"})
    proc.expected_exit = True  # type: ignore[attr-defined]
    eventually(lambda: readyz(port)[0] == 200, 90, "the worker was not ready", stack)
    publish(settings, 3)
    eventually(lambda: "progress" in readyz(port)[1].get("waiting_on", {}), 30, "readyz never said it waits on progress", stack)
    assert proc.wait(timeout=60) == STALL_EXIT_CODE
    log = stack.log("worker")
    assert f"group {group} made no progress for" in log and "exiting with code 75" in log
    assert settings.kafka.catalog().requests.name + "[" in log  # the partitions behind are named


def test_the_completion_and_webhook_workers_watch_their_groups_too(stack: Stack, own_broker: TansuBroker) -> None:
    settings, _ = _on(stack, own_broker, stall_seconds=3.0)
    stack.extra_env["VOICENOTE_WEBHOOKS__SIGNING_SECRET"] = "whsec_" + "A" * 32
    ports = {"completion": free_port(), "webhooks": free_port()}
    for role, port in ports.items():
        stack.start(role, "worker", role, "--web-port", str(port))
    for role, port in ports.items():
        eventually(lambda port=port: readyz(port)[0] == 200, 90, f"the {role} worker was not ready", stack)
        group = f"{settings.worker.group_id}-{role}"
        eventually(lambda port=port, group=group: f'voicenote_seconds_since_progress{{group="{group}"}}'
                   in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text,
                   30, f"the {role} worker does not export its group's seconds since progress", stack)
