"""The examples of docs/client.md, run as written against the real broker and workers (null engine)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.stack import REPO, Stack
from voicenote.kafka import ensure_topics

pytestmark = pytest.mark.e2e


def doc_examples(standalone: bool = False) -> list[str]:
    """The runnable examples of one client: voicenote_client's (standalone) or voicenote.client's."""
    text = (REPO / "docs" / "client.md").read_text()
    return [code for code in re.findall(r"```python\n(.*?)```", text, flags=re.S) if ("voicenote_client" in code) == standalone]


def test_the_docs_have_the_examples_this_test_checks() -> None:
    assert len(doc_examples()) == 4
    assert len(doc_examples(standalone=True)) == 2


@pytest.mark.timeout(600)
def test_standalone_client_docs_examples_run(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """voicenote_client's examples, through the real workers: what it submits is processed, its completions read back."""
    kafka = stack.settings.kafka
    ensure_topics(kafka, kafka.catalog().all())
    stack.extra_env.update({"VOICENOTE_ENGINE__KIND": "null"})
    stack.start_worker("synthesis")
    stack.start_worker("completion")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers)
    monkeypatch.setenv("VOICENOTE_TOPIC_PREFIX", kafka.topic_prefix)

    outputs = []
    for code in doc_examples(standalone=True):
        capsys.readouterr()
        exec(compile(code, "docs/client.md", "exec"), {"__name__": "__docs__"})  # noqa: S102 - our own docs
        outputs.append(capsys.readouterr().out)
        stack.check_alive()

    sync, many = outputs
    acked, done = sync.splitlines()
    job_id, word = acked.split()
    assert job_id.startswith("job_") and word == "acknowledged"
    done_id, status, ms, _unit = done.split()
    assert (done_id, status) == (job_id, "succeeded") and int(ms) > 0
    assert [line.split()[1] for line in many.splitlines()] == ["succeeded"] * 3


@pytest.mark.timeout(600)
def test_client_docs_examples_run(stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                  tmp_path: Path) -> None:
    kafka = stack.settings.kafka
    ensure_topics(kafka, kafka.catalog().all())
    stack.extra_env.update({"VOICENOTE_ENGINE__KIND": "null"})
    stack.start_worker("synthesis")
    stack.start_worker("completion")
    monkeypatch.setenv("VOICENOTE_KAFKA__BOOTSTRAP_SERVERS", kafka.bootstrap_servers)
    monkeypatch.setenv("VOICENOTE_KAFKA__TOPIC_PREFIX", kafka.topic_prefix)

    outputs = []
    for code in doc_examples():
        capsys.readouterr()
        exec(compile(code, "docs/client.md", "exec"), {"__name__": "__docs__"})  # noqa: S102 - our own docs
        outputs.append(capsys.readouterr().out)
        stack.check_alive()

    single, many, billing, refused = outputs
    job_id, status, ms, _unit, url = single.split()
    assert job_id.startswith("job_") and status == "succeeded" and int(ms) > 0 and url.endswith(f"/v1/jobs/{job_id}/audio")
    assert [line.split()[1] for line in many.splitlines()] == ["succeeded"] * 3
    seconds = float(re.fullmatch(r"billable audio: ([0-9.]+) s\n", billing).group(1))  # type: ignore[union-attr]
    assert seconds >= int(ms) / 1000  # at least the first example's note
    assert refused == "refused: text must not be empty\n"
