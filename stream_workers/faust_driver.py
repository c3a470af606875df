"""A Faust Kafka driver whose consumer fetch wait is a setting.

Faust's aiokafka driver hard-codes ``fetch_max_wait_ms=1500``: an idle partition's fetch then parks
for 1.5 s on the broker, which makes a 100 ms batch window meaningless (measured against Tansu: p50
400 ms producer-to-agent at 1500 ms, 64 ms at 50 ms). We subclass the driver rather than patch
aiokafka: the consumer thread builds the aiokafka consumer as usual, then takes our fetch wait before
``start()`` builds its fetcher from it.

Neither Faust nor aiokafka offers a public way to do this, so the private hooks used here are listed in
:func:`hook_problems`, checked when a :class:`FetchWaitApp` is built (an upgrade that breaks them stops
start-up with a clear message instead of silently fetching at 1.5 s) and by tests/unit/test_faust_driver.py.
Tested with faust-streaming 0.15 and aiokafka 0.14.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT

from voicenote.errors import ConfigError

# (owner, attribute) of every private hook this module overrides or sets.
_HOOKS = (
    (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer"),
    (faust_aiokafka.Consumer, "_new_consumer_thread"),
    (faust.App, "_new_transport"),
)
# What aiokafka's AIOKafkaConsumer.start() must still do for the attribute we set to take effect.
_FETCHER_READS_IT = "fetch_max_wait_ms=self._fetch_max_wait_ms"


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
    return problems


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        app = self.app
        assert isinstance(app, FetchWaitApp)
        # aiokafka reads this attribute in start() when it creates the Fetcher.
        consumer._fetch_max_wait_ms = app.fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class FetchWaitTransport(faust_aiokafka.Transport):
    Consumer = _Consumer


class FetchWaitApp(faust.App):
    """A Faust app using :class:`FetchWaitTransport` for its consumer."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int = 50, **kwargs: Any) -> None:
        if problems := hook_problems():
            raise ConfigError("the installed faust-streaming/aiokafka do not fit stream_workers/faust_driver.py "
                              f"(tested with faust-streaming 0.15, aiokafka 0.14): {'; '.join(problems)}")
        self.fetch_max_wait_ms = fetch_max_wait_ms
        # Set by a role that must finish work in hand before the worker stops (see main.run_worker).
        self.drain_hook: Callable[[], Awaitable[None]] | None = None
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> TransportT:
        return FetchWaitTransport(self.conf.broker_consumer, self)
