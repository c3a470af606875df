"""The one module that reaches into Faust, mode and aiokafka internals: the fetch wait and the SIGTERM drain.

Everything else in stream_workers uses public Faust API only (sensors, signals, timers, agents).

**Fetch wait.** A Faust Kafka driver whose consumer fetch wait is a setting, and changes with traffic
(:class:`~stream_workers.runtime.fetch_wait.FetchWaitPolicy`: long once the consumer has been idle a while).

Faust's aiokafka driver hard-codes ``fetch_max_wait_ms=1500``: an idle partition's fetch then parks
for 1.5 s on the broker, which makes a 100 ms batch window meaningless (measured against Tansu: p50
400 ms producer-to-agent at 1500 ms, 64 ms at 50 ms). We subclass the driver rather than patch
aiokafka: the consumer thread builds the aiokafka consumer as usual, then takes our fetch wait before
``start()`` builds its fetcher from it.

**Drain on SIGTERM** (:class:`DrainingWorker`). mode's Worker installs its SIGTERM handler as
``_on_sigterm`` and stops through ``_schedule_shutdown`` (which also lets ``execute_from_commandline``
wait for the stop); there is no public hook that runs *before* the stop begins, so we override the one
and call the other.

Neither Faust, mode nor aiokafka offers a public way to do these, so the private hooks used here are listed in
:func:`hook_problems`, checked when a :class:`FetchWaitApp` is built (an upgrade that breaks them stops
start-up with a clear message instead of silently fetching at 1.5 s) and by tests/unit/test_faust_driver.py.
Tested with faust-streaming 0.15 and aiokafka 0.14.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import aiokafka
import aiokafka.consumer.fetcher
import faust
import mode
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT

from stream_workers.runtime.fetch_wait import FetchWaitPolicy
from stream_workers.runtime.probes import Readiness
from voicenote.errors import ConfigError

log = logging.getLogger(__name__)

# (owner, attribute) of every private hook this module overrides or sets.
_HOOKS = (
    (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records"),
    (faust_aiokafka.Consumer, "_new_consumer_thread"),
    (faust.App, "_new_transport"),
    (mode.Worker, "_on_sigterm"),
    (mode.Worker, "_schedule_shutdown"),
)
# What aiokafka's AIOKafkaConsumer.start() must still do for the attribute we set to take effect.
_FETCHER_READS_IT = "fetch_max_wait_ms=self._fetch_max_wait_ms"
# What aiokafka's Fetcher must still do for the wait set on it between fetches (FetchWaitPolicy) to take effect.
_REQUEST_READS_IT = "FetchRequest(self._fetch_max_wait_ms,"
# ... and read per round for the fetcher's own wake-up interval (set longer while the fetch wait is long).
_ROUND_READS_IT = "backoff=self._fetcher_timeout"
# What mode's Worker must still do for our _on_sigterm to be the SIGTERM handler.
_SIGTERM_CALLS_IT = "add_signal_handler(signal.SIGTERM,self._on_sigterm)"


def _source(obj: Any) -> str:
    return inspect.getsource(obj)


def hook_problems() -> list[str]:
    """What the installed Faust and aiokafka no longer provide of the private hooks used here (empty: all there)."""
    problems = [f"{owner.__module__}.{owner.__qualname__}.{name} is gone" for owner, name in _HOOKS if not hasattr(owner, name)]
    try:
        start = _source(aiokafka.AIOKafkaConsumer.start)
    except (OSError, TypeError) as exc:
        problems.append(f"cannot read aiokafka.AIOKafkaConsumer.start: {exc}")
    else:
        if _FETCHER_READS_IT not in start.replace(" ", ""):
            problems.append(f"aiokafka.AIOKafkaConsumer.start no longer builds its Fetcher with {_FETCHER_READS_IT}")
    try:
        actions = _source(aiokafka.consumer.fetcher.Fetcher._get_actions_per_node)
    except (OSError, TypeError, AttributeError) as exc:
        problems.append(f"cannot read aiokafka's Fetcher._get_actions_per_node: {exc}")
    else:
        if _REQUEST_READS_IT.replace(" ", "") not in "".join(actions.split()):
            problems.append(f"aiokafka's Fetcher no longer builds each fetch request with {_REQUEST_READS_IT}")
        if _ROUND_READS_IT not in "".join(actions.split()):
            problems.append(f"aiokafka's Fetcher no longer times its rounds with {_ROUND_READS_IT}")
    try:
        handlers = _source(mode.Worker._install_signal_handlers_unix)
    except (OSError, TypeError, AttributeError) as exc:
        problems.append(f"cannot read mode.Worker._install_signal_handlers_unix: {exc}")
    else:
        if _SIGTERM_CALLS_IT not in handlers.replace(" ", ""):
            problems.append(f"mode.Worker no longer installs its SIGTERM handler with {_SIGTERM_CALLS_IT}")
    return problems


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    _fetcher_timeout: float | None = None  # aiokafka's own, read from the fetcher the first time the wait changes

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        app = self.app
        assert isinstance(app, FetchWaitApp)
        # aiokafka reads this attribute in start() when it creates the Fetcher.
        consumer._fetch_max_wait_ms = app.fetch_max_wait_ms
        return consumer

    async def _fetch_records(self, consumer: aiokafka.AIOKafkaConsumer, active_partitions: Any,
                             timeout: float | None = None, max_records: int | None = None) -> Any:
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout, max_records=max_records)
        app = self.app
        assert isinstance(app, FetchWaitApp)
        # Runs on the consumer thread, before the fetcher's task builds its next request (fetched_records only
        # signals it): that request parks for the wait chosen here. Records in hand: the short wait again.
        wait = app.fetch_wait.observe(bool(records))
        fetcher = consumer._fetcher
        if fetcher._fetch_max_wait_ms != wait:
            log.debug("fetch wait now %d ms (%s)", wait, "idle" if wait != app.fetch_wait.busy_ms else "records flowing")
            fetcher._fetch_max_wait_ms = wait
            # The fetcher's task also wakes every fetcher_timeout (0.2 s) to look for work, though a parked fetch's
            # answer, an assignment or a resume wakes it anyway: while parked for long, it looks less often.
            if self._fetcher_timeout is None:
                self._fetcher_timeout = fetcher._fetcher_timeout
            fetcher._fetcher_timeout = max(self._fetcher_timeout, wait / 2000)
        return records


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class FetchWaitTransport(faust_aiokafka.Transport):
    Consumer = _Consumer


class FetchWaitApp(faust.App):
    """A Faust app using :class:`FetchWaitTransport` for its consumer."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int = 50, fetch_idle_wait_ms: int | None = None,
                 fetch_idle_after_seconds: float = 10.0, **kwargs: Any) -> None:
        if problems := hook_problems():
            raise ConfigError("the installed faust-streaming/aiokafka do not fit stream_workers/runtime/faust_driver.py "
                              f"(tested with faust-streaming 0.15, aiokafka 0.14): {'; '.join(problems)}")
        self.fetch_wait = FetchWaitPolicy(fetch_max_wait_ms, fetch_idle_wait_ms, fetch_idle_after_seconds)
        # Set by a role that must finish work in hand before the worker stops (see main.run_worker).
        self.drain_hook: Callable[[], Awaitable[None]] | None = None
        super().__init__(*args, **kwargs)

    @property
    def fetch_max_wait_ms(self) -> int:
        """The fetch wait while records flow (the policy's short one)."""
        return self.fetch_wait.busy_ms

    def _new_transport(self) -> TransportT:
        return FetchWaitTransport(self.conf.broker_consumer, self)


class DrainingWorker(faust.Worker):
    """On SIGTERM, first lets the app finish its work in hand (its ``drain_hook``), then stops as usual.

    The whole shutdown is bounded by ``grace_seconds``: past it the process exits hard, leaving what
    was not committed to be redelivered (spot interruptions give a fixed notice; losing the pod is
    worse than redoing a batch).
    """

    def __init__(self, app: faust.App, *, grace_seconds: float, readiness: Readiness | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._grace = grace_seconds
        self._draining = False
        self._readiness = readiness or Readiness()

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        self._readiness.started = True

    def _on_sigterm(self) -> None:
        if self._draining:
            return
        self._draining = True
        self._readiness.draining = True
        watchdog = threading.Timer(self._grace, self._exit_hard)
        watchdog.daemon = True
        watchdog.start()
        asyncio.ensure_future(self._drain_then_stop(), loop=self.loop)

    async def _drain_then_stop(self) -> None:
        hook = getattr(self.app, "drain_hook", None)
        if hook is not None:
            log.info("SIGTERM: draining (grace %.1fs)", self._grace)
            try:
                await asyncio.wait_for(hook(), self._grace * 0.7)
            except TimeoutError:
                log.warning("drain did not finish in %.1fs; stopping anyway (unacknowledged requests are redelivered)",
                            self._grace * 0.7)
        self._schedule_shutdown(signal.SIGTERM)

    @staticmethod
    def _exit_hard() -> None:
        log.error("shutdown exceeded its grace period; exiting now")
        # Not sys.exit: this runs on a timer thread while the event loop may be stuck in the drain.
        os._exit(1)
