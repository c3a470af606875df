"""A worker's readiness says when the broker stops answering, and clears when it answers again."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ops.services import TansuBroker
from stream_workers.runtime.probes import BrokerWatch, Readiness
from voicenote.retry import DependencyHealth
from voicenote.settings import KafkaSettings


def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(what)


def test_two_missed_checks_make_the_worker_wait_on_kafka_until_the_broker_answers(tmp_path: Path) -> None:
    broker = TansuBroker(log_path=tmp_path / "tansu.log").start()
    health = DependencyHealth()
    readiness = Readiness(started=True, health=health)
    watch = BrokerWatch(KafkaSettings(bootstrap_servers=broker.bootstrap), health, interval=0.2, timeout=0.5)
    try:
        watch.check()
        assert readiness.ready and watch.missed == 0

        broker.kill()
        watch.check()  # one miss is not yet an outage (a slow answer on a busy machine)
        assert watch.missed == 1 and readiness.ready
        watch.check()
        assert not readiness.ready
        status, body = readiness.body()
        assert status == 503 and b'"kafka"' in body and b"no metadata from the broker" in body

        watch.start()  # the background loop clears it once the broker is back
        broker.start()
        eventually(lambda: readiness.ready, 30, "readiness did not recover after the broker came back")
        assert readiness.body()[0] == 200 and watch.missed == 0
    finally:
        watch.stop()
        broker.stop()
