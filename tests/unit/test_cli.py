"""The CLI's and the client's pure parts: pacing, filters, times, redrive groups, completion objects."""

from __future__ import annotations

import sys
import time

import pytest

from ops.cli import Pacer, UsageError, _epoch_ms, _filters, _schema_fields
from ops.replay import matches, redrive_group
from schemas.validation import JOB_ID
from voicenote.client import Completion, new_job_id, new_traceparent


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_pacer_spaces_calls_by_the_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(4.0, clock, clock.sleep)
    for _ in range(5):
        pacer.wait()
    assert clock.slept == [0.25] * 4 and clock.now == pytest.approx(101.0)


def test_pacer_does_not_burst_after_a_pause_and_without_a_rate_never_sleeps() -> None:
    clock = FakeClock()
    pacer = Pacer(2.0, clock, clock.sleep)
    pacer.wait()
    clock.now += 10  # the broker was slow
    pacer.wait()
    pacer.wait()
    assert clock.slept == [0.5]
    free = FakeClock()
    unpaced = Pacer(None, free, free.sleep)
    for _ in range(3):
        unpaced.wait()
    assert free.slept == []


def api_request(voice: str, requested: str | None) -> dict:
    return {"job_id": "j", "voice": voice, "webhook_url": None,
            "attributes": {"owner": "acme", **({"voice_requested": requested} if requested else {})}}


def test_voice_filter_matches_the_name_requested_or_the_installed_id() -> None:
    assert matches(api_request("en_US-joe-medium", "alloy"), {"voice": "alloy"})
    assert matches(api_request("en_US-joe-medium", "alloy"), {"voice": "en_US-joe-medium"})
    assert not matches(api_request("en_US-joe-medium", "echo"), {"voice": "alloy"})
    assert matches(api_request("en_US-joe-medium", None), {"voice": "en_US-joe-medium"})  # direct publishers without the attribute
    assert matches(api_request("x", None), {"attributes.owner": "acme", "webhook_url": "None"})
    assert not matches(api_request("x", None), {"attributes.owner": "other"})


def test_filters_are_checked_against_the_schema() -> None:
    fields = _schema_fields("SynthesisRequest")
    assert _filters(["voice=alloy", "attributes.tenant=a=b"], fields, "e.g.") == {"voice": "alloy", "attributes.tenant": "a=b"}
    for bad, reason in [("voice", "expected FIELD=VALUE"), ("=x", "expected FIELD=VALUE"), ("colour=red", "unknown field 'colour'")]:
        with pytest.raises(UsageError, match=reason):
            _filters([bad], fields, "e.g.")
    assert "status" in _schema_fields("JobCompletion") and "attributes" not in fields


def test_times_are_iso_and_utc_without_a_zone() -> None:
    assert _epoch_ms("--since", "1970-01-01T00:00:01") == 1000
    assert _epoch_ms("--since", "1970-01-01T01:00:01+01:00") == 1000
    assert _epoch_ms("--since", "1970-01-01T00:00:01Z") == 1000
    assert _epoch_ms("--since", None) is None
    with pytest.raises(UsageError, match="bad --since 'yesterday'"):
        _epoch_ms("--since", "yesterday")


def test_each_redrive_selection_has_its_own_group() -> None:
    assert redrive_group("voicenote", "dlq") == "voicenote-dlq-redrive"
    assert redrive_group("voicenote", "dlq", error_type="unknown_schema", source_topic=None) == \
        "voicenote-dlq-redrive.error_type=unknown_schema"
    assert redrive_group("g", "webhooks", job_id="job_1", error_type="webhook_failed") == \
        "g-webhooks-redrive.error_type=webhook_failed,job_id=job_1"


def test_completion_lifts_the_common_fields_and_keeps_the_record() -> None:
    record = {"job_id": "job_1", "status": "failed", "created_at": 1, "completed_at": 2, "error_code": "engine_error",
              "error_message": "boom", "engine": "piper"}
    c = Completion.from_record(record)
    assert (c.job_id, c.status, c.ok, c.error_code, c.format, c.audio_url) == ("job_1", "failed", False, "engine_error", "wav", None)
    assert c.record["engine"] == "piper"
    assert Completion.from_record({**record, "status": "succeeded"}).ok


def test_generated_ids_have_the_shapes_the_workers_accept() -> None:
    assert all(JOB_ID.match(new_job_id()) for _ in range(50))
    version, trace, span, flags = new_traceparent().split("-")
    assert (version, len(trace), len(span), flags) == ("00", 32, 16, "01")


def test_progress_goes_to_stderr_every_few_seconds_when_not_on_a_terminal(capsys) -> None:
    # Regression: a dry run over 55 records took 37 s with no progress when stderr was not a terminal.
    import argparse

    from ops.cli import _Progress
    from ops.replay import ReplayReport

    bar = _Progress(argparse.Namespace(progress="auto"), "replay", every=0.05)  # capsys: not a terminal
    report = ReplayReport(read=2, matched=1)
    bar(report)
    bar(report)
    time.sleep(0.3)  # nothing else happens: the line still comes, from its own thread
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 2 and lines[-1].startswith("replay: 2 records in ") and "matched=1, published=0" in lines[-1]
    assert "\r" not in capsys.readouterr().err  # plain lines, no terminal redraws

    bar = _Progress(argparse.Namespace(progress="off"), "replay", every=0.05)
    bar(report)
    time.sleep(0.2)
    bar.close()
    assert capsys.readouterr().err == ""


def test_emit_stops_quietly_once_the_reader_has_gone(monkeypatch) -> None:
    import io

    import ops.cli

    class Gone(io.StringIO):
        def write(self, _s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(ops.cli, "_STDOUT_GONE", False)
    monkeypatch.setattr(sys, "stdout", Gone())
    assert ops.cli.emit("one line") is False
    assert ops.cli.emit("and another") is False  # no second attempt, no traceback
    print("harmless now")  # stdout points at /dev/null
