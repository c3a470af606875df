"""Whether the workers the API routes to are there: the consumer groups have a member (``/readyz``).

``api.ready_requires_workers`` turns it on. ``voicenote run`` does (it prints "Try it" once ``/readyz``
is 200, and a job sent before the synthesis worker joined its group waited ~13 s, issue 24); the settings
default is off, for Kubernetes: there the API's readiness must not depend on workers that KEDA scales
from zero (docs/reliability.md).

One ``DescribeGroups`` per API process every ``api.ready_workers_check_seconds``, in a background task:
``/readyz`` reads the cached answer and never waits on the broker for it.

What counts as "has a member": a member with partitions assigned, when the broker lists members; the
group's state ``Stable`` otherwise. The embedded broker (Tansu 0.6) answers DescribeGroups with the state
(``Empty`` with no consumer, ``Stable`` once a consumer joined and was assigned) but an empty member list,
and ListGroups with nothing, so the state is the signal that works on both Tansu and Kafka.

Once a group was seen with a member, a rebalance or a worker restart does not make the API flap: the group
counts as absent only after it had no member for ``2 x kafka.session_timeout_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from voicenote.kafka import admin_client
from voicenote.models import synthesis_group
from voicenote.settings import Settings

log = logging.getLogger(__name__)

NO_MEMBER = "no member"
UNKNOWN = "not checked yet"


def worker_groups(settings: Settings) -> dict[str, str]:
    """The consumer groups the API routes work to, by the ``waiting_on`` key each is reported under:
    each served family's synthesis group and the completion group (named as stream_workers/app.py does)."""
    group_id = settings.worker.group_id
    families = list(settings.models.families)
    groups: dict[str, str] = {}
    for family in families:
        key = "synthesis_group" if len(families) == 1 else f"synthesis_group_{family}"
        groups[key] = synthesis_group(group_id, family)
    groups["completion_group"] = f"{group_id}-completion"
    return groups


def has_member(description: Any) -> bool:
    """Whether a ``ConsumerGroupDescription`` shows a consumer with partitions (see the module's doc)."""
    members = list(getattr(description, "members", None) or [])
    if members:
        return any(m.assignment is not None and list(m.assignment.topic_partitions or []) for m in members)
    state = getattr(description, "state", None)
    return getattr(state, "name", str(state)).upper() == "STABLE"


class WorkerGroups:
    """Watches ``groups`` (key -> group id) in a background task; :meth:`waiting_on` reads the cached answer."""

    def __init__(self, settings: Settings, groups: dict[str, str] | None = None, *,
                 describe: Callable[[Sequence[str]], dict[str, bool]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._groups = dict(groups if groups is not None else worker_groups(settings))
        self._interval = settings.api.ready_workers_check_seconds
        self._grace = 2 * settings.kafka.session_timeout_ms / 1000
        self._kafka = settings.kafka
        self._describe = describe or self._describe_with_admin
        self._clock = clock
        self._admin: Any = None
        self._last_member: dict[str, float] = {}  # group id -> when last seen with a member
        self._checked = False
        self._task: asyncio.Task[None] | None = None

    def _describe_with_admin(self, groups: Sequence[str]) -> dict[str, bool]:
        if self._admin is None:
            self._admin = admin_client(self._kafka, {"log_level": 2})
        futures = self._admin.describe_consumer_groups(list(groups), request_timeout=5)
        answer: dict[str, bool] = {}
        for group, future in futures.items():
            try:
                answer[group] = has_member(future.result(timeout=10))
            except Exception:  # noqa: BLE001 (a group the broker cannot describe has no member we can see)
                answer[group] = False
        return answer

    def observe(self, answer: dict[str, bool]) -> None:
        """Record one check's answer (group id -> has a member)."""
        now = self._clock()
        for group, present in answer.items():
            if present:
                self._last_member[group] = now
        self._checked = True

    async def check_once(self) -> None:
        try:
            answer = await asyncio.to_thread(self._describe, list(self._groups.values()))
        except Exception as exc:  # noqa: BLE001 (the broker down: /readyz's kafka check says so; keep the last answer)
            log.debug("describing the worker groups failed: %s", exc)
            return
        self.observe(answer)

    def waiting_on(self) -> dict[str, str]:
        """The groups with no member, by key (empty: every group has one, or had one within the grace)."""
        if not self._checked:
            return {key: UNKNOWN for key in self._groups}
        now = self._clock()
        waiting: dict[str, str] = {}
        for key, group in self._groups.items():
            seen = self._last_member.get(group)
            # Never seen: not ready until it is. Seen: absent only after the grace (a rebalance, a restart).
            if seen is None or now - seen > max(self._grace, self._interval * 2):
                waiting[key] = NO_MEMBER
        return waiting

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="worker-groups")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
