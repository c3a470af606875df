"""The children of ``voicenote run`` die with it: the broker and its storage server, started in their own
sessions (so a Ctrl-C reaches the runner first), are signalled by the kernel when the runner dies, however
it dies (``ops.services.die_with_parent``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# The smallest piece of `voicenote run` that starts the broker on its storage server, then waits.
RUNNER = """
import sys, time
from pathlib import Path
from ops.embedded import start_broker
from ops.services import free_port
broker, objects = start_broker("disk", Path(sys.argv[1]), free_port())
print(broker.pid, objects.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by init) counts as gone
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_broker_and_storage_server_die_when_the_runner_is_killed(tmp_path: Path) -> None:
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    children: list[int] = []
    try:
        assert runner.stdout is not None
        children = [int(pid) for pid in runner.stdout.readline().split()]
        assert len(children) == 2 and all(alive(pid) for pid in children)
        runner.send_signal(signal.SIGKILL)  # no chance to stop them itself, as when `| tee` took its stdout away
        runner.wait(10)
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in children if alive(pid)] == []
    finally:
        runner.kill()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
