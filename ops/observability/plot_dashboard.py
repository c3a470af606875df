"""The dashboard from a real run, without Grafana: ``python -m ops.observability.plot_dashboard``.

Starts the stack natively on free ports (Tansu broker, Redis, local audio storage, the API and the
synthesis, completion and webhook workers, as ``voicenote run`` does), Debian's ``prometheus`` scraping
every process with the compose scrape config's ``group`` labels, and a load: bursts of jobs, some
with webhooks to a local receiver that answers 200 or 500, and a few undecodable records on the
request topic (dead letters). Then it runs every query of every dashboard panel
(ops/observability/dashboard.py, the same ones Grafana shows) against that Prometheus over the run and
draws them: docs/dashboard.png, with the number of points each query returned in
results/dashboard_queries.json and the series themselves in results/dashboard_series.json
(``--replot`` draws the picture again from that file, without a run). A query that returns nothing fails
the run.

The picture is a stand-in for Grafana (which cannot be installed here), and says so on its face. Only
this run's consumer groups are drawn, under the names a deployment gives them (``voicenote-<role>``, not
the run's tagged ones); any other group Prometheus knows of is left out. The caption names the faults the
load injects (``FAULTS``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from ops.observability.dashboard import PANELS
from ops.services import RedisServer, TansuBroker, free_port, wait_for_port
from voicenote.settings import KafkaSettings, RedisSettings, Settings, StorageSettings, WebhookSettings, to_env

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec_ZGV2LW9ubHktd2ViaG9vay1zZWNyZXQtY2hhbmdlLW1l"
# What the load injects, named in the picture's caption (kept in step with _load).
FAULTS = [
    "every 5th burst, one undecodable record on the request topic (synthesis dead letters)",
    "a webhook on jobs 1, 4 and 7 of each burst, job 4's to a receiver that answers 500 (retrying, then failed)",
]
STAND_IN = "STAND-IN: matplotlib drawing of the Grafana dashboard's queries (Grafana is not installable here)"
TEXTS = ["Your order has shipped.", "Meeting moved to three o'clock.", "Reminder: the report is due on Friday morning.",
         "Hello! This voice note was synthesized from text, batched with others, and stored.", "Yes.",
         "The quick brown fox jumps over the lazy dog, twice, just to be sure."]


class _Receiver(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200 if self.path == "/ok" else 500)
        self.end_headers()


def _prometheus_config(targets: dict[str, tuple[int, str]], api_port: int) -> str:
    lines = ["global: {scrape_interval: 2s}", "scrape_configs:",
             "  - job_name: voicenote-api", f"    static_configs: [{{targets: ['127.0.0.1:{api_port}']}}]",
             "  - job_name: voicenote-workers", "    static_configs:"]
    lines += [f"      - {{targets: ['127.0.0.1:{port}'], labels: {{group: {group}}}}}" for port, group in targets.values()]
    return "\n".join(lines) + "\n"


def run(seconds: float, out_png: Path, out_json: Path, out_series: Path) -> dict[str, int]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise SystemExit("needs Prometheus on PATH: apt-get install prometheus")
    work = Path(tempfile.mkdtemp(prefix="vn-dash-"))
    broker = TansuBroker(log_path=work / "tansu.log").start()
    redis = RedisServer().start()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    tag = f"dash{int(time.time())}"
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix=f"{tag}.", request_partitions=4, partitions=2),
                        redis=RedisSettings(url=redis.url, key_prefix=f"{tag}:"),
                        storage=StorageSettings(local_dir=work / "audio"),
                        webhooks=WebhookSettings(signing_secret=SECRET, allow_hosts=["127.0.0.1"], backoff_base_seconds=2.0),  # type: ignore[arg-type]
                        worker={"group_id": tag, "max_batch": 8, "window_seconds": 0.1})  # type: ignore[arg-type]
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICENOTE_")}
    env.update(to_env(settings))
    env.update({"VOICENOTE_API__ALLOW_ANONYMOUS": "true", "VOICENOTE_API__PORT": str(api_port),
                "VOICENOTE_API__PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}", "PYTHONPATH": str(REPO),
                "VOICENOTE_SYNTHESIS__LAG_INTERVAL_SECONDS": "1"})
    workers = {role: (free_port(), f"{tag}-{role}") for role in ("synthesis", "completion", "webhooks")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "ops.cli", "api"], env=env, cwd=work,
                                      stdout=open(work / "api.log", "wb"), stderr=subprocess.STDOUT))
        for role, (port, _) in workers.items():
            procs.append(subprocess.Popen([sys.executable, "-m", "ops.cli", "worker", role, "--web-port", str(port)], env=env,
                                          cwd=work, stdout=open(work / f"{role}.log", "wb"), stderr=subprocess.STDOUT))
        (work / "prometheus.yml").write_text(_prometheus_config(workers, api_port))
        prom_port = free_port()
        procs.append(subprocess.Popen([prometheus, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
                                       f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=open(work / "prometheus.log", "wb"),
                                      stderr=subprocess.STDOUT))
        wait_for_port("127.0.0.1", api_port, 120, "api")
        for port, _ in workers.values():
            wait_for_port("127.0.0.1", port, 120, "worker")
        _wait_ready([f"http://127.0.0.1:{p}/readyz" for p, _ in workers.values()] + [f"http://127.0.0.1:{api_port}/readyz"])
        started = time.time()
        _load(settings, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{receiver.server_address[1]}", seconds)
        time.sleep(20)  # let the last jobs, retries and scrapes land
        # The run's groups carry its tag; the picture names them as a deployment does, and only them.
        groups = {group: f"voicenote-{role}" for role, (_, group) in workers.items()}
        series = _query(f"http://127.0.0.1:{prom_port}", started - 10, time.time(), groups)
        out_series.write_text(json.dumps(series) + "\n")
        return _plot(series, out_png, out_json)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        receiver.shutdown()
        redis.stop()
        broker.stop()


def _wait_ready(urls: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending and time.monotonic() < deadline:
        for url in list(pending):
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    pending.remove(url)
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    if pending:
        raise SystemExit(f"not ready: {pending}")


def _load(settings: Settings, api: str, hooks: str, seconds: float) -> None:
    from voicenote.kafka import producer

    garbage = producer(settings.kafka)
    end = time.monotonic() + seconds
    burst = 0
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < end:
            burst += 1
            for i in range(2 + burst % 7):  # bursts of 2..8 jobs
                text = TEXTS[(burst + i) % len(TEXTS)]
                # Mostly new texts, so the engine works; every fourth repeats one (a result-cache hit).
                body: dict[str, Any] = {"input": text if i % 4 == 3 else f"{text} Note {burst}.{i}.", "response_format": "wav"}
                if i % 3 == 0:
                    body["webhook_url"] = f"{hooks}/ok" if i % 2 == 0 else f"{hooks}/fail"
                client.post(f"{api}/v1/audio/speech/async", json=body)
            if burst % 5 == 0:
                garbage.produce(settings.kafka.catalog().requests.name, value=b"not an avro record", key=b"garbage")
                garbage.flush(5)
            time.sleep(3.0)


def _query(prom: str, start: float, end: float, groups: dict[str, str]) -> dict[str, Any]:
    """Every panel query's series over the run: [(legend, [[seconds into the run, value], ...])] per query.
    A series whose ``group`` is not one of ``groups`` (a test's, another run's) is dropped."""
    out: dict[str, Any] = {"window_seconds": round(end - start), "queries": {}, "dropped_groups": []}
    for _, _, queries in PANELS:
        for legend, expr in queries:
            resp = httpx.get(f"{prom}/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": 2}, timeout=30)
            resp.raise_for_status()
            drawn, dropped = _series(resp.json()["data"]["result"], legend, groups, start)
            out["queries"][expr] = drawn
            out["dropped_groups"] += dropped
    out["dropped_groups"] = sorted(set(out["dropped_groups"]))
    return out


def _series(result: list[dict[str, Any]], legend: str, groups: dict[str, str],
            start: float) -> tuple[list[Any], list[str]]:
    """A range query's result as [legend, [[seconds, value], ...]] pairs, and the groups left out: a
    series with a ``group`` label outside ``groups`` is dropped, the others are renamed by it."""
    drawn: list[Any] = []
    dropped: list[str] = []
    for s in result:
        metric = dict(s["metric"])
        if "group" in metric:
            if metric["group"] not in groups:
                dropped.append(metric["group"])
                continue
            metric["group"] = groups[metric["group"]]
        label = legend
        for key, value in metric.items():
            label = label.replace("{{" + key + "}}", value)
        drawn.append([label, [[round(float(t) - start, 3), float(v)] for t, v in s["values"]]])
    return drawn, dropped


def _plot(series: dict[str, Any], out_png: Path, out_json: Path) -> dict[str, int]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts: dict[str, int] = {}
    cols = 2
    rows = (len(PANELS) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows + 1.2), constrained_layout=True)
    for ax, (title, unit, queries) in zip(axes.flat, PANELS, strict=False):
        for _, expr in queries:
            drawn = series["queries"][expr]
            counts[expr] = sum(len(values) for _, values in drawn)
            for label, values in drawn:
                ax.plot([x for x, _ in values], [y for _, y in values], label=label, linewidth=1.4)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds into the run", fontsize=8)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        ax.text(0.5, 0.5, "stand-in, not Grafana", transform=ax.transAxes, ha="center", va="center",
                fontsize=16, color="grey", alpha=0.18, rotation=20)
    fig.suptitle(f"{STAND_IN}\nVoicenote dashboard: every panel's PromQL against Prometheus over a real "
                 f"{series['window_seconds']} s run", fontsize=12, color="#a00000")
    fig.text(0.5, -0.005, "Injected faults: " + "; ".join(FAULTS) + ".", ha="center", va="top", fontsize=9, wrap=True)
    fig.savefig(out_png, dpi=90, bbox_inches="tight")
    out_json.write_text(json.dumps({"window_seconds": series["window_seconds"], "points_per_query": counts,
                                    "dropped_groups": series.get("dropped_groups", [])}, indent=2) + "\n")
    empty = [q for q, n in counts.items() if n == 0]
    if empty:
        raise SystemExit(f"queries that returned no data: {empty}")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "dashboard.png")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "dashboard_queries.json")
    parser.add_argument("--series", type=Path, default=REPO / "results" / "dashboard_series.json")
    parser.add_argument("--replot", action="store_true", help="draw again from --series, without a run")
    args = parser.parse_args()
    if args.replot:
        counts = _plot(json.loads(args.series.read_text()), args.png, args.json)
    else:
        counts = run(args.seconds, args.png, args.json, args.series)
    print(f"{len(counts)} queries, all with data; wrote {args.png} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
