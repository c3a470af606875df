"""The workers' metrics: synthesis engine use, end-to-end job latency, webhook outcomes, consumer lag."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from schemas.events import JobCompletion
from stream_workers.runtime.metrics import CompletionMetrics, SynthesisMetrics, WebhookMetrics, job_latency_seconds


def _done(created_at: object, completed_at: object, status: str = "succeeded") -> JobCompletion:
    return JobCompletion(job_id="job_m", status=status, created_at=created_at, completed_at=completed_at)  # type: ignore[arg-type]


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_latency_runs_from_request_creation_to_completion_in_either_timestamp_form() -> None:
    created = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    done = datetime(2026, 1, 1, 12, 0, 2, 500_000, tzinfo=UTC)
    assert job_latency_seconds(_done(created, done)) == 2.5
    assert job_latency_seconds(_done(1_000, 3_500)) == 2.5
    assert job_latency_seconds(_done(5_000, 4_000)) == 0.0  # producer clock ahead


def test_completions_are_counted_and_timed_by_status() -> None:
    metrics = CompletionMetrics()
    metrics.completed([_done(0, 1_200), _done(0, 40, "failed"), _done(0, 70_000)])
    s = _samples(metrics.render())
    assert s[("voicenote_completions_total", (("status", "succeeded"),))] == 2
    assert s[("voicenote_job_latency_seconds_count", (("status", "succeeded"),))] == 2
    assert s[("voicenote_job_latency_seconds_sum", (("status", "succeeded"),))] == 71.2
    assert s[("voicenote_job_latency_seconds_bucket", (("le", "1.0"), ("status", "succeeded")))] == 0
    assert s[("voicenote_job_latency_seconds_bucket", (("le", "2.0"), ("status", "succeeded")))] == 1
    assert s[("voicenote_job_latency_seconds_count", (("status", "failed"),))] == 1


def test_every_webhook_outcome_series_exists_before_its_first_event() -> None:
    metrics = WebhookMetrics()
    metrics.outcome("retrying")
    s = _samples(metrics.render())
    assert {o: s[("voicenote_webhook_deliveries_total", (("outcome", o),))] for o in WebhookMetrics.OUTCOMES} == {
        "delivered": 0, "retrying": 1, "failed": 0, "refused": 0}


def test_records_behind_counts_from_each_committed_offset_to_the_partition_end() -> None:
    from stream_workers.runtime.metrics import records_behind

    assert records_behind({"a": 100, "b": 40, "c": 7}, {"a": 90, "b": 40, "c": None}) == 10 + 0 + 7
    assert records_behind({"a": 5}, {"a": 9}) == 0  # a commit past a stale end is not negative lag


async def test_committed_offsets_come_from_faust_public_monitor_and_forget_revoked_partitions() -> None:
    from faust.types import TP

    from stream_workers.runtime.faust_driver import FetchWaitApp
    from stream_workers.runtime.metrics import track_committed_offsets

    app = FetchWaitApp("lag-guard", broker="kafka://127.0.0.1:9", web_enabled=False)
    track_committed_offsets(app)
    kept, lost = TP("requests", 0), TP("requests", 1)
    app.monitor.on_tp_commit({kept: 12, lost: 30})  # what Faust's consumer calls after each commit
    assert app.monitor.tp_committed_offsets == {kept: 12, lost: 30}
    await app.on_partitions_revoked.send({lost})
    assert app.monitor.tp_committed_offsets == {kept: 12}


def test_idle_fraction_is_idle_over_idle_plus_busy_and_is_exported() -> None:
    m = SynthesisMetrics()
    m.batch(size=8, fill_wait=0.1, engine_seconds=3.0, audio_seconds=6.0, waste=0.1)
    m.busy(3.0)
    m.idle(1.0)
    assert m.idle_fraction == 0.25
    text = m.render().decode()
    assert "voicenote_synthesis_engine_idle_fraction 0.25" in text
    assert "voicenote_synthesis_real_time_factor 0.5" in text
    assert 'voicenote_synthesis_batch_size_bucket{le="8.0"} 1.0' in text


def test_lag_series_carry_the_workers_own_group_and_model() -> None:
    """Issue 21: the exporter sets `group` (and `model` for synthesis) on its lag, so no scrape config has to."""
    synthesis, completion = SynthesisMetrics(), CompletionMetrics()
    synthesis.consumer_lag.labels(group="voicenote-synthesis-s1mini", model="s1mini").set(7)
    completion.consumer_lag.labels(group="voicenote-completion").set(3)
    assert b'voicenote_synthesis_consumer_lag{group="voicenote-synthesis-s1mini",model="s1mini"} 7.0' in synthesis.render()
    assert b'voicenote_completion_consumer_lag{group="voicenote-completion"} 3.0' in completion.render()
