"""Constants still spelled in more than one module agree with the contract's (schemas/validation.py).

Each of these should become an import of the contract's constant once the API and worker rewrites have
landed; until then this test keeps the copies from drifting apart.
"""

from __future__ import annotations

from typing import get_args

from producer_api.models import Format
from producer_api.routes import jobs
from schemas.validation import FORMATS, JOB_ID
from voicenote.audio import CONTENT_TYPES, EXTENSIONS


def test_every_list_of_formats_is_the_contracts() -> None:
    assert set(get_args(Format)) == set(CONTENT_TYPES) == set(EXTENSIONS) == set(FORMATS)


def test_the_api_path_patterns_are_the_contracts_job_id() -> None:
    for param in (jobs.JobId, jobs.BatchId):
        assert [m.pattern for m in param.metadata if hasattr(m, "pattern")] == [JOB_ID.pattern]
