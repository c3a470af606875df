"""The embedded runner restarts a dead child after a backoff instead of stopping everything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ops.embedded import RestartPolicy, Supervisor, child_env, cpu_engine_kind, redis_for_run


def test_backoff_doubles_for_a_crash_loop_and_resets_after_a_stable_run() -> None:
    policy = RestartPolicy(base=1, cap=8, stable_after=60)
    policy.started(0)
    assert [policy.delay_after_exit(t) for t in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 8]
    policy.started(100)
    assert policy.delay_after_exit(200) == 1  # ran 100 s: a fresh crash, not a loop


def test_a_child_that_dies_is_started_again_and_the_others_keep_running(tmp_path: Path) -> None:
    now = [0.0]

    def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        # A real process: "die" exits at once with code 3, "live" sleeps until stopped.
        code = "import sys; sys.exit(3)" if args[0] == "die" else "import time; time.sleep(60)"
        return subprocess.Popen([sys.executable, "-c", code])

    sup = Supervisor({}, clock=lambda: now[0], start=start)
    try:
        dying = sup.add("dying", ["die"], tmp_path / "d.log")
        living = sup.add("living", ["live"], tmp_path / "l.log")
        first_pid = dying.proc.pid if dying.proc else None
        assert dying.proc is not None and dying.proc.wait(10) == 3
        events = sup.tick()
        assert events == [f"dying exited with code 3; restarting in 1s (log: {tmp_path / 'd.log'})"]
        assert sup.tick() == []  # not due yet
        now[0] = 1.0
        assert sup.tick() == ["dying restarted (restart 1)"]
        assert dying.proc is not None and dying.proc.pid != first_pid and dying.restarts == 1
        assert living.proc is not None and living.proc.poll() is None and living.restarts == 0
    finally:
        sup.stop(timeout=5)
    assert all(c.proc is not None and c.proc.poll() is not None for c in sup.children.values())


def test_each_child_gets_its_own_env_on_top_of_the_shared_one(tmp_path: Path) -> None:
    seen: dict[str, dict[str, str]] = {}

    def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        seen[args[0]] = env
        return subprocess.Popen([sys.executable, "-c", "pass"])

    sup = Supervisor({"SHARED": "1", "VOICENOTE_ENGINE__KIND": "piper"}, start=start)
    try:
        sup.add("cpu", ["cpu"], tmp_path / "c.log")
        sup.add("gpu", ["gpu"], tmp_path / "g.log", {"VOICENOTE_ENGINE__KIND": "s1mini"})
    finally:
        sup.stop(timeout=5)
    assert seen["cpu"] == {"SHARED": "1", "VOICENOTE_ENGINE__KIND": "piper"}
    assert seen["gpu"] == {"SHARED": "1", "VOICENOTE_ENGINE__KIND": "s1mini"}


def test_the_api_routes_only_to_families_a_worker_here_serves(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("VOICENOTE_MODELS__FAMILIES", raising=False)
    monkeypatch.delenv("VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR", raising=False)
    assert child_env("b:1", "redis://r", 8000, tmp_path)["VOICENOTE_MODELS__FAMILIES"] == '["piper"]'
    monkeypatch.setenv("VOICENOTE_ENGINE__S1MINI_CHECKPOINT_DIR", str(tmp_path))
    assert child_env("b:1", "redis://r", 8000, tmp_path)["VOICENOTE_MODELS__FAMILIES"] == '["piper","s1mini"]'
    monkeypatch.setenv("VOICENOTE_MODELS__FAMILIES", '["s1mini"]')
    assert child_env("b:1", "redis://r", 8000, tmp_path)["VOICENOTE_MODELS__FAMILIES"] == '["s1mini"]'
    assert cpu_engine_kind({"VOICENOTE_ENGINE__KIND": "s1mini"}) == "piper"
    assert cpu_engine_kind({"VOICENOTE_ENGINE__KIND": "null"}) == "null"


def test_run_takes_the_configured_redis_and_only_falls_back_without_one() -> None:
    configured = redis_for_run({"VOICENOTE_REDIS__URL": "redis://127.0.0.1:6379/7"})
    assert (configured.url, configured.required) == ("redis://127.0.0.1:6379/7", True)  # never swapped for another
    default = redis_for_run({})
    assert (default.url, default.required) == ("redis://127.0.0.1:6379/0", False)  # or a Valkey of its own


def test_the_children_keep_the_callers_settings(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VOICENOTE_STORAGE__LOCAL_DIR", "/srv/notes")
    monkeypatch.setenv("VOICENOTE_API__PUBLIC_BASE_URL", "https://notes.example")
    monkeypatch.setenv("VOICENOTE_KAFKA__SESSION_TIMEOUT_MS", "6000")
    monkeypatch.setenv("VOICENOTE_REDIS__KEY_PREFIX", "mine:")
    env = child_env("b:1", "redis://127.0.0.1:6379/7", 8001, tmp_path)
    assert env["VOICENOTE_STORAGE__LOCAL_DIR"] == "/srv/notes" and env["VOICENOTE_API__PUBLIC_BASE_URL"] == "https://notes.example"
    assert env["VOICENOTE_KAFKA__SESSION_TIMEOUT_MS"] == "6000" and env["VOICENOTE_REDIS__KEY_PREFIX"] == "mine:"
    assert (env["VOICENOTE_REDIS__URL"], env["VOICENOTE_API__PORT"], env["VOICENOTE_KAFKA__BOOTSTRAP_SERVERS"]) == (
        "redis://127.0.0.1:6379/7", "8001", "b:1")  # what the run decides
    monkeypatch.delenv("VOICENOTE_STORAGE__LOCAL_DIR")
    assert child_env("b:1", "redis://r", 8001, tmp_path)["VOICENOTE_STORAGE__LOCAL_DIR"] == str(tmp_path / "audio")


def test_seaweedfs_counts_as_started_only_once_a_volume_server_has_registered(tmp_path: Path) -> None:
    # A restart on existing data: the S3 gateway answers before the volume server's first heartbeat, and every read
    # is a 500 until then (the broker gave up after its retries). The master's /dir/status says when it has one.
    import http.server
    import json
    import threading

    from ops.services import WeedS3

    answers = [{"Topology": {"Max": 0, "Free": 0, "DataCenters": None, "Layouts": None}},
               {"Topology": {"Max": 8, "DataCenters": [{"Id": "DefaultDataCenter", "Racks": [
                   {"Id": "DefaultRack", "DataNodes": [{"Url": "127.0.0.1:61045", "Volumes": 2}]}]}]}}]

    class Master(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(answers[0] if self.path == "/dir/status" else {}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Master)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        weed = WeedS3(root=tmp_path, ports={"master.port": server.server_address[1]})
        assert weed._volume_servers() == 0
        answers.pop(0)
        assert weed._volume_servers() == 1
        server.shutdown()
        server.server_close()
        assert weed._volume_servers() == 0  # no master answering: not ready either
    finally:
        server.server_close()


def test_a_run_that_names_no_storage_gets_diskstore_unless_its_data_dir_holds_seaweedfs_data(tmp_path: Path) -> None:
    from ops.embedded import default_broker_storage

    assert default_broker_storage(tmp_path) == "diskstore"  # a fresh data dir
    (tmp_path / "broker" / "seaweedfs").mkdir(parents=True)
    assert default_broker_storage(tmp_path) == "disk"  # an earlier run's SeaweedFS data: its queued work is served
    (tmp_path / "broker" / "objects.sqlite3").write_bytes(b"")
    assert default_broker_storage(tmp_path) == "diskstore"  # diskstore data there too: the default's
