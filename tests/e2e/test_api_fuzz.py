"""A schemathesis run against /openapi.json finds no server error (issue #14: the fuzzer found a 500
for "\\u0007" in 758 cases). The API and both workers run as real processes with a zero-cost voice, so
the synchronous endpoint answers instead of timing out. Kept to a modest number of cases per operation;
`python -m schemathesis.cli run` with more examples is the same check, longer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import Stack

pytestmark = pytest.mark.e2e


def test_schemathesis_finds_no_server_error(stack: Stack, tmp_path: Path) -> None:
    pytest.importorskip("schemathesis")  # in the dev extra, which `make install` installs
    stack.extra_env.update({"VOICENOTE_ENGINE__KIND": "null", "VOICENOTE_ENGINE__NULL_BATCH_SECONDS": "0.01",
                            "VOICENOTE_API__SYNC_TIMEOUT_SECONDS": "20", "VOICENOTE_API__RATE_PER_SECOND": "1000",
                            "VOICENOTE_API__RATE_BURST": "1000"})
    stack.start_worker("synthesis")
    stack.start_worker("completion")
    stack.start_api()
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{stack.base_url}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "40", "--seed", "14", "--request-timeout", "30",
         "--generation-allow-x00", "true", "--phases", "examples,coverage,fuzzing", "--no-color",
         "--report", "junit", "--report-dir", str(tmp_path / "schemathesis")],
        capture_output=True, text=True, timeout=540, cwd=tmp_path)  # its example cache stays out of the repo
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:] + stack.log("api")[-3000:]
    # Every generated case passed the check (a warning, such as an operation answering only 4xx, is not a failure).
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts is not None and counts.group(1) == counts.group(2) and int(counts.group(1)) > 100, run.stdout[-3000:]
