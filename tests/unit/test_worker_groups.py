"""The API's view of the workers' groups: Tansu's state-only answer, the grace after a member leaves, the settings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from ops.embedded import child_env
from producer_api.services.worker_groups import NO_MEMBER, UNKNOWN, WorkerGroups, has_member
from voicenote.settings import Settings


def test_has_member_takes_assigned_members_else_the_stable_state() -> None:
    stable = SimpleNamespace(name="STABLE")
    empty = SimpleNamespace(name="EMPTY")
    assert has_member(SimpleNamespace(state=stable, members=[]))  # Tansu 0.6: state only
    assert not has_member(SimpleNamespace(state=empty, members=[]))
    unassigned = SimpleNamespace(assignment=SimpleNamespace(topic_partitions=[]))
    assert not has_member(SimpleNamespace(state=stable, members=[unassigned]))
    assigned = SimpleNamespace(assignment=SimpleNamespace(topic_partitions=[object()]))
    assert has_member(SimpleNamespace(state=empty, members=[assigned]))


def test_a_group_seen_once_stays_present_for_twice_the_session_timeout() -> None:
    now = [0.0]
    s = Settings()
    w = WorkerGroups(s, {"synthesis_group": "g-s", "completion_group": "g-c"}, clock=lambda: now[0])
    assert w.waiting_on() == {"synthesis_group": UNKNOWN, "completion_group": UNKNOWN}
    w.observe({"g-s": True, "g-c": False})
    assert w.waiting_on() == {"completion_group": NO_MEMBER}
    w.observe({"g-s": False, "g-c": True})
    now[0] = 2 * s.kafka.session_timeout_ms / 1000 - 1
    assert w.waiting_on() == {}  # a rebalance: no flap
    now[0] += 2 * s.kafka.session_timeout_ms / 1000
    assert w.waiting_on() == {"synthesis_group": NO_MEMBER, "completion_group": NO_MEMBER}


def test_off_by_default_and_on_in_voicenote_run(tmp_path: Path) -> None:
    assert Settings().api.ready_requires_workers is False
    env = child_env("127.0.0.1:9092", "redis://127.0.0.1:6379/0", 8000, tmp_path)
    assert env["VOICENOTE_API__READY_REQUIRES_WORKERS"] == "true"
