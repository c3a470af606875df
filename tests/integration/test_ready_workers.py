"""``/readyz`` with ``api.ready_requires_workers``: not ready until the synthesis and completion groups have a
member with partitions, on the real broker (Tansu natively: DescribeGroups gives the group's state there)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from producer_api.services.worker_groups import worker_groups
from schemas.topics import CPU_FAMILY, build_catalog
from tests.integration.conftest import running_api
from voicenote.kafka import consumer
from voicenote.settings import ApiSettings, ModelSettings, Settings

pytestmark = pytest.mark.integration


@asynccontextmanager
async def member(settings: Settings, group: str, topic: str) -> AsyncIterator[None]:
    """A real consumer in ``group`` on ``topic``, polled in one thread, entered once it got its partitions."""
    # The workers' session timeout (the tests' short one): with librdkafka's 45 s default, Tansu took ~23 s to
    # hand a lone member its partitions.
    c = consumer(settings.kafka, group, {"enable.auto.commit": False, "log_level": 2,
                                         "session.timeout.ms": settings.kafka.session_timeout_ms,
                                         "heartbeat.interval.ms": settings.kafka.heartbeat_interval_ms})
    stop, assigned = threading.Event(), threading.Event()

    def poll() -> None:
        c.subscribe([topic], on_assign=lambda _c, parts: assigned.set() if parts else None)
        while not stop.is_set():
            c.poll(0.2)
        c.close()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(assigned.wait, 30), f"{group} got no partitions"
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)


async def ready_after(api: Any, predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        resp = await api.get("/readyz")
        if predicate(resp) or time.monotonic() > deadline:
            return resp
        await asyncio.sleep(0.2)


def _settings(settings: Settings, **api: Any) -> Settings:
    return settings.model_copy(update={"api": ApiSettings(allow_anonymous=True, **api),
                                       "models": ModelSettings(families=[CPU_FAMILY])})


async def test_readyz_waits_for_the_synthesis_then_the_completion_group(settings: Settings) -> None:
    s = _settings(settings, ready_requires_workers=True, ready_workers_check_seconds=0.5)
    catalog = build_catalog(prefix=s.kafka.topic_prefix, request_partitions=s.kafka.request_partitions, partitions=s.kafka.partitions)
    groups = worker_groups(s)
    assert groups == {"synthesis_group": f"{s.worker.group_id}-synthesis", "completion_group": f"{s.worker.group_id}-completion"}
    async with running_api(s, token=None) as api:
        first = await ready_after(api, lambda r: r.json()["waiting_on"].get("synthesis_group") == "no member")
        assert first.status_code == 503, first.text
        assert first.json()["waiting_on"] == {"synthesis_group": "no member", "completion_group": "no member"}
        assert first.json()["checks"]["kafka"] is True
        async with member(s, groups["synthesis_group"], catalog.requests_for(CPU_FAMILY).name):
            resp = await ready_after(api, lambda r: "synthesis_group" not in r.json()["waiting_on"])
            assert resp.status_code == 503 and resp.json()["waiting_on"] == {"completion_group": "no member"}, resp.text
            async with member(s, groups["completion_group"], catalog.completions.name):
                resp = await ready_after(api, lambda r: r.status_code == 200)
                assert resp.status_code == 200 and resp.json()["waiting_on"] == {}, resp.text
        # The members left: within the grace (2 x session timeout) it stays ready: a rebalance does not flap.
        resp = await api.get("/readyz")
        assert resp.status_code == 200, resp.text


async def test_readyz_ignores_the_workers_by_default(settings: Settings) -> None:
    s = _settings(settings)
    assert s.api.ready_requires_workers is False
    async with running_api(s, token=None) as api:
        resp = await api.get("/readyz")
        assert resp.status_code == 200 and resp.json()["waiting_on"] == {}, resp.text
