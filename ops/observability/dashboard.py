"""The Voicenote Grafana dashboard, as data: ``python -m ops.observability.dashboard`` writes its JSON.

Panels and their PromQL live here once; the JSON in ops/observability/grafana/dashboards/ is generated
(tests keep it in step), and ``ops.observability.plot_dashboard`` runs the same queries against a real
Prometheus to draw docs/dashboard.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("grafana") / "dashboards" / "voicenote.json"

# (title, unit, [(legend, PromQL)])
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Consumer lag per group", "short", [
        ("{{group}}", "sum by (group) (voicenote_synthesis_consumer_lag)"),
        ("{{group}}", "sum by (group) (voicenote_completion_consumer_lag)"),
    ]),
    ("Batch size (segments per engine batch)", "short", [
        ("mean", "sum(rate(voicenote_synthesis_batch_size_sum[1m])) / sum(rate(voicenote_synthesis_batch_size_count[1m]))"),
        ("p95", "histogram_quantile(0.95, sum by (le) (rate(voicenote_synthesis_batch_size_bucket[1m])))"),
    ]),
    ("Engine busy fraction", "percentunit", [
        ("{{group}}", "sum by (group) (rate(voicenote_synthesis_engine_busy_seconds_total[1m])) / "
                      "(sum by (group) (rate(voicenote_synthesis_engine_busy_seconds_total[1m])) + "
                      "sum by (group) (rate(voicenote_synthesis_engine_idle_seconds_total[1m])))"),
    ]),
    ("Job latency (request created to completion)", "s", [
        ("p50", "histogram_quantile(0.5, sum by (le) (rate(voicenote_job_latency_seconds_bucket[1m])))"),
        ("p95", "histogram_quantile(0.95, sum by (le) (rate(voicenote_job_latency_seconds_bucket[1m])))"),
    ]),
    ("Dead letters (growth over 5 min)", "short", [
        ("synthesis", "sum(increase(voicenote_synthesis_dead_letters_total[5m])) or vector(0)"),
        ("completion", "sum(increase(voicenote_completion_dead_letters_total[5m])) or vector(0)"),
        ("webhooks", "sum(increase(voicenote_webhook_deliveries_total{outcome=~\"failed|refused\"}[5m])) or vector(0)"),
    ]),
    ("Webhook outcomes", "reqps", [
        ("{{outcome}}", "sum by (outcome) (rate(voicenote_webhook_deliveries_total[1m]))"),
    ]),
    ("Jobs completed by status", "reqps", [
        ("{{status}}", "sum by (status) (rate(voicenote_completions_total[1m]))"),
    ]),
    ("API requests by status", "reqps", [
        ("{{status}}", "sum by (status) (rate(voicenote_api_requests_total[1m]))"),
    ]),
]


def dashboard() -> dict:
    panels = []
    for i, (title, unit, queries) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "prometheus"}}
                        for j, (legend, expr) in enumerate(queries)],
        })
    return {"uid": "voicenote", "title": "Voicenote", "schemaVersion": 39, "version": 1, "refresh": "10s",
            "time": {"from": "now-30m", "to": "now"}, "tags": ["voicenote"], "panels": panels}


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT}\n")
