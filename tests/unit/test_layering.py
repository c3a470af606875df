"""The layering contract (pyproject.toml [tool.importlinter]) holds, and it does catch a back-arrow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("schemas", "voicenote", "producer_api", "stream_workers", "ops")
# The worker's role packages and their runtime (issue 20): the contracts name them, so a stand-in tree has them.
WORKER_PACKAGES = ("stream_workers/runtime", "stream_workers/synthesis", "stream_workers/completion", "stream_workers/webhooks")


def _stand_in(tmp_path: Path) -> dict[str, str]:
    """A tree with our package names, empty, to shadow ours on the path; the environment that puts it there."""
    for name in PACKAGES + WORKER_PACKAGES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    for module in ("app.py", "main.py"):
        (tmp_path / "stream_workers" / module).write_text("")
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def _lint(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=240)


def test_the_tree_keeps_every_layering_contract() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 kept, 0 broken" in done.stdout


def test_a_contract_importing_the_runtime_breaks_the_build(tmp_path: Path) -> None:
    # A stand-in tree with the same package names, shadowing ours on the path: schemas imports the runtime
    # (the arrow this issue removed) and the runtime imports a worker module.
    env = _stand_in(tmp_path)
    (tmp_path / "schemas" / "codec.py").write_text("from voicenote import errors\n")
    (tmp_path / "voicenote" / "errors.py").write_text("")
    (tmp_path / "voicenote" / "jobs.py").write_text("import stream_workers.app\n")
    (tmp_path / "stream_workers" / "app.py").write_text("")
    done = _lint(tmp_path, env)
    assert done.returncode != 0
    assert "3 kept, 2 broken" in done.stdout, done.stdout  # the Kafka-libraries and worker contracts hold there
    assert "schemas.codec -> voicenote.errors" in done.stdout
    assert "voicenote.jobs -> stream_workers.app" in done.stdout


def test_a_kafka_client_built_outside_voicenote_kafka_breaks_the_build(tmp_path: Path) -> None:
    # Kafka clients from one place (issue 20): a worker module or the client library importing confluent-kafka
    # or aiokafka themselves breaks the contract; voicenote.kafka and the Faust driver may.
    env = _stand_in(tmp_path)
    (tmp_path / "voicenote" / "kafka").mkdir()
    (tmp_path / "voicenote" / "kafka" / "__init__.py").write_text("import confluent_kafka\n")
    (tmp_path / "voicenote" / "kafka" / "clients.py").write_text("from confluent_kafka import Consumer\n")
    (tmp_path / "stream_workers" / "runtime" / "faust_driver.py").write_text("import aiokafka\n")
    (tmp_path / "stream_workers" / "dispatcher.py").write_text("from confluent_kafka import Consumer\nimport voicenote.kafka\n")
    (tmp_path / "voicenote" / "client.py").write_text("import aiokafka\n")
    done = _lint(tmp_path, env)
    assert done.returncode != 0
    assert "4 kept, 1 broken" in done.stdout, done.stdout
    assert "stream_workers.dispatcher -> confluent_kafka" in done.stdout
    assert "voicenote.client -> aiokafka" in done.stdout
    assert "voicenote.kafka.clients -> confluent_kafka" not in done.stdout
    assert "stream_workers.runtime.faust_driver -> aiokafka" not in done.stdout


def test_a_role_importing_another_role_or_the_runtime_a_role_breaks_the_build(tmp_path: Path) -> None:
    # Worker roles as packages (issue 20): synthesis, completion and webhooks import runtime and the engine, never
    # each other; runtime imports no role. Through a third module too.
    env = _stand_in(tmp_path)
    (tmp_path / "stream_workers" / "engine").mkdir()
    (tmp_path / "stream_workers" / "engine" / "__init__.py").write_text("")
    (tmp_path / "stream_workers" / "runtime" / "context.py").write_text("")
    (tmp_path / "stream_workers" / "runtime" / "metrics.py").write_text("import stream_workers.completion.status\n")
    (tmp_path / "stream_workers" / "synthesis" / "loop.py").write_text(
        "import stream_workers.runtime.context\nimport stream_workers.engine\nimport stream_workers.webhooks.policy\n")
    (tmp_path / "stream_workers" / "webhooks" / "policy.py").write_text("")
    (tmp_path / "stream_workers" / "completion" / "status.py").write_text("import stream_workers.runtime.context\n")
    done = _lint(tmp_path, env)
    assert done.returncode != 0
    assert "3 kept, 2 broken" in done.stdout, done.stdout
    assert "stream_workers.synthesis.loop -> stream_workers.webhooks.policy" in done.stdout
    assert "stream_workers.runtime.metrics -> stream_workers.completion.status" in done.stdout
    assert "stream_workers.synthesis.loop -> stream_workers.runtime.context" not in done.stdout
