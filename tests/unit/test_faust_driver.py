"""The upgrade guard of stream_workers/runtime/faust_driver.py: the private Faust and aiokafka hooks it relies on
(there is no public way to set the consumer's fetch wait) are still there and still do what we need."""

from __future__ import annotations

import pytest

from stream_workers.runtime import faust_driver
from stream_workers.runtime.faust_driver import FetchWaitApp
from stream_workers.runtime.fetch_wait import FetchWaitPolicy
from voicenote.errors import ConfigError


def test_the_installed_faust_and_aiokafka_have_every_hook_the_driver_uses() -> None:
    assert faust_driver.hook_problems() == []


async def test_a_worker_consumer_is_built_with_the_configured_fetch_wait() -> None:
    app = FetchWaitApp("guard", broker="kafka://127.0.0.1:9", fetch_max_wait_ms=37, web_enabled=False)
    thread = app.consumer._thread  # type: ignore[attr-defined]  # the aiokafka Consumer's, built by our _Consumer
    consumer = thread._create_worker_consumer(app.transport)  # what the thread does when it starts
    assert consumer._fetch_max_wait_ms == 37


def test_a_missing_hook_stops_start_up_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    # What an upgrade that renames the hook looks like to the guard.
    monkeypatch.delattr(faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer")
    problems = faust_driver.hook_problems()
    assert len(problems) == 1 and "_create_worker_consumer" in problems[0]
    with pytest.raises(ConfigError, match="_create_worker_consumer"):
        FetchWaitApp("guard", broker="kafka://127.0.0.1:9", web_enabled=False)


def test_aiokafka_reading_the_fetch_wait_elsewhere_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faust_driver, "_source", lambda obj: "def start(self): self._fetcher = Fetcher(fetch_max_wait_ms=500)")
    assert any("fetch_max_wait_ms=self._fetch_max_wait_ms" in p for p in faust_driver.hook_problems())


def test_mode_no_longer_routing_sigterm_to_on_sigterm_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The drain runs from DrainingWorker._on_sigterm; a mode that installs another SIGTERM handler would skip it.
    monkeypatch.setattr(faust_driver, "_source", lambda obj: "def start(self): fetch_max_wait_ms=self._fetch_max_wait_ms\n"
                        "def install(self): self.loop.add_signal_handler(signal.SIGTERM, self._on_term)")
    assert [p for p in faust_driver.hook_problems() if "SIGTERM" in p]


def test_a_renamed_shutdown_hook_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    import mode

    monkeypatch.delattr(mode.Worker, "_schedule_shutdown")
    assert any("_schedule_shutdown" in p for p in faust_driver.hook_problems())


async def test_the_consumer_thread_sets_the_fetchers_wait_from_what_each_fetch_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    app = FetchWaitApp("guard", broker="kafka://127.0.0.1:9", fetch_max_wait_ms=100, fetch_idle_wait_ms=2000,
                       fetch_idle_after_seconds=10.0, web_enabled=False)
    thread = app.consumer._thread  # type: ignore[attr-defined]
    now = [0.0]
    app.fetch_wait = FetchWaitPolicy(100, 2000, 10.0, clock=lambda: now[0])  # the app's policy, on a clock of our own

    class Fetcher:
        _fetch_max_wait_ms = 100
        _fetcher_timeout = 0.2  # aiokafka's default

    class Consumer:
        _fetcher = Fetcher()

    answers: list[dict] = []

    async def fetched(self: object, consumer: object, active: object, timeout: float | None = None,
                      max_records: int | None = None) -> dict:
        return answers.pop(0)

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records", fetched)
    consumer = Consumer()
    now[0] = 11.0
    answers.append({})
    await thread._fetch_records(consumer, set(), timeout=1.0)
    assert consumer._fetcher._fetch_max_wait_ms == 2000  # quiet past the bound: the next request parks long
    assert consumer._fetcher._fetcher_timeout == 1.0  # and the fetcher's own task looks for work every half wait
    answers.append({"tp": ["record"]})
    assert await thread._fetch_records(consumer, set(), timeout=1.0) == {"tp": ["record"]}
    assert consumer._fetcher._fetch_max_wait_ms == 100  # records in hand: short again before the next request
    assert consumer._fetcher._fetcher_timeout == 0.2


def test_aiokafka_building_fetch_requests_without_the_fetchers_wait_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = faust_driver._source

    def source(obj: object) -> str:
        if getattr(obj, "__name__", "") == "_get_actions_per_node":
            return "req = FetchRequest(self._max_wait, self._fetch_min_bytes)"
        return real(obj)

    monkeypatch.setattr(faust_driver, "_source", source)
    assert any("FetchRequest(self._fetch_max_wait_ms," in p for p in faust_driver.hook_problems())
    assert any("backoff=self._fetcher_timeout" in p for p in faust_driver.hook_problems())
