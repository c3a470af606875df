"""docs/dashboard.png is a stand-in for Grafana and must say so: ops/observability/plot_dashboard.py draws
only the run's own consumer groups (a test's or another run's are left out), labels the picture as a
stand-in and names the injected faults in its caption."""

from __future__ import annotations

import json

import pytest

from ops.observability import plot_dashboard
from ops.observability.dashboard import PANELS
from tests.k8s_support import ROOT


def _result(group: str, values: list[tuple[float, str]]) -> dict:
    return {"metric": {"group": group}, "values": [[t, v] for t, v in values]}


def test_only_the_runs_groups_are_drawn_and_under_their_deployment_names() -> None:
    groups = {"dash123-synthesis": "voicenote-synthesis"}
    result = [_result("dash123-synthesis", [(100.0, "3"), (102.0, "4")]),
              _result("test-e2e-9f1-synthesis", [(100.0, "50")]),
              {"metric": {}, "values": [[101.0, "1"]]}]
    drawn, dropped = plot_dashboard._series(result, "{{group}}", groups, start=100.0)
    assert drawn == [["voicenote-synthesis", [[0.0, 3.0], [2.0, 4.0]]], ["{{group}}", [[1.0, 1.0]]]]
    assert dropped == ["test-e2e-9f1-synthesis"]


def test_the_picture_says_it_is_a_stand_in_and_names_the_injected_faults(tmp_path) -> None:
    pytest.importorskip("matplotlib", reason="make dashboard installs matplotlib (the dev extra)")
    texts: list[str] = []
    import matplotlib.figure

    original = matplotlib.figure.Figure.savefig

    def capture(fig, *args, **kwargs):  # the figure's own texts: its title and caption
        texts.extend(t.get_text() for t in fig.texts)
        texts.append(fig._suptitle.get_text() if fig._suptitle else "")
        return original(fig, *args, **kwargs)

    series = {"window_seconds": 10, "dropped_groups": [],
              "queries": {expr: [["x", [[0.0, 1.0]]]] for _, _, queries in PANELS for _, expr in queries}}
    mp = pytest.MonkeyPatch()
    mp.setattr(matplotlib.figure.Figure, "savefig", capture)
    try:
        plot_dashboard._plot(series, tmp_path / "d.png", tmp_path / "d.json")
    finally:
        mp.undo()
    shown = " ".join(texts)
    assert plot_dashboard.STAND_IN in shown and "STAND-IN" in shown
    for fault in plot_dashboard.FAULTS:
        assert fault in shown
    assert (tmp_path / "d.png").stat().st_size > 0


def test_the_shipped_series_have_no_foreign_groups() -> None:
    series = json.loads((ROOT / "results" / "dashboard_series.json").read_text())
    names = {label for drawn in series["queries"].values() for label, _ in drawn}
    groups = {n for n in names if n.startswith(("voicenote-", "dash", "test"))}
    assert groups and all(g.startswith("voicenote-") for g in groups), groups
