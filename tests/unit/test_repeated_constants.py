"""The API spells no contract constant of its own: formats, job-id patterns and the clock come from schemas/.

The audio module's tables are per-format data (content type, extension), not copies; they must cover
exactly the contract's formats. The workers' own copies are checked where they are removed (issue 13).
"""

from __future__ import annotations

import re
from pathlib import Path

from producer_api import models
from producer_api.routes import jobs
from schemas import validation
from schemas.validation import FORMATS, JOB_ID
from voicenote.audio import CONTENT_TYPES, EXTENSIONS

API = Path(models.__file__).parent


def test_the_api_format_is_the_contracts() -> None:
    assert models.Format is validation.Format
    assert set(CONTENT_TYPES) == set(EXTENSIONS) == set(FORMATS)


def test_the_api_path_patterns_are_the_contracts_job_id() -> None:
    for param in (jobs.JobId, jobs.BatchId):
        assert [m.pattern for m in param.metadata if hasattr(m, "pattern")] == [JOB_ID.pattern]


def test_no_api_module_spells_a_copy() -> None:
    copies = {
        "a job-id pattern": re.compile(re.escape("[A-Za-z0-9_-]{1,64}")),
        "a list of formats": re.compile(r"""["']mp3["'],\s*["']opus["']"""),
        "a clock of its own": re.compile(r"def _?now_ms\b|time\.time\(\) \* 1000"),
    }
    found = [f"{path.relative_to(API.parent)}: {what}" for path in sorted(API.rglob("*.py"))
             for what, pattern in copies.items() if pattern.search(path.read_text())]
    assert found == [], found
