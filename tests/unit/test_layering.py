"""The layering contract (pyproject.toml [tool.importlinter]) holds, and it does catch a back-arrow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("schemas", "voicenote", "producer_api", "stream_workers", "ops")


def _lint(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=240)


def _stand_in_packages(root: Path) -> None:
    """Empty packages with our names (and the engine, which a contract names), to shadow ours on the path."""
    for name in PACKAGES:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text("")
    (root / "stream_workers" / "engine").mkdir()
    (root / "stream_workers" / "engine" / "__init__.py").write_text("")


def test_the_tree_keeps_every_layering_contract() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout


def test_a_contract_importing_the_runtime_breaks_the_build(tmp_path: Path) -> None:
    # A stand-in tree with the same package names, shadowing ours on the path: schemas imports the runtime
    # (the arrow this issue removed) and the runtime imports a worker module.
    _stand_in_packages(tmp_path)
    (tmp_path / "schemas" / "codec.py").write_text("from voicenote import errors\n")
    (tmp_path / "voicenote" / "errors.py").write_text("")
    (tmp_path / "voicenote" / "jobs.py").write_text("import stream_workers.app\n")
    (tmp_path / "stream_workers" / "app.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = _lint(tmp_path, env)
    assert done.returncode != 0
    assert "2 kept, 2 broken" in done.stdout, done.stdout  # the Kafka-libraries and engine contracts hold there
    assert "schemas.codec -> voicenote.errors" in done.stdout
    assert "voicenote.jobs -> stream_workers.app" in done.stdout


def test_a_kafka_client_built_outside_voicenote_kafka_breaks_the_build(tmp_path: Path) -> None:
    # Kafka clients from one place (issue 20): a worker module or the client library importing confluent-kafka
    # or aiokafka themselves breaks the contract; voicenote.kafka and the Faust driver may.
    _stand_in_packages(tmp_path)
    (tmp_path / "voicenote" / "kafka").mkdir()
    (tmp_path / "voicenote" / "kafka" / "__init__.py").write_text("import confluent_kafka\n")
    (tmp_path / "voicenote" / "kafka" / "clients.py").write_text("from confluent_kafka import Consumer\n")
    (tmp_path / "stream_workers" / "faust_driver.py").write_text("import aiokafka\n")
    (tmp_path / "stream_workers" / "dispatcher.py").write_text("from confluent_kafka import Consumer\nimport voicenote.kafka\n")
    (tmp_path / "voicenote" / "client.py").write_text("import aiokafka\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = _lint(tmp_path, env)
    assert done.returncode != 0
    assert "3 kept, 1 broken" in done.stdout, done.stdout
    assert "stream_workers.dispatcher -> confluent_kafka" in done.stdout
    assert "voicenote.client -> aiokafka" in done.stdout
    assert "voicenote.kafka.clients -> confluent_kafka" not in done.stdout
    assert "stream_workers.faust_driver -> aiokafka" not in done.stdout


def test_the_engine_importing_the_worker_breaks_the_build(tmp_path: Path) -> None:
    # The engine below the worker (issue 20): a copy of our real tree, plus a temporary engine module that
    # imports the synthesis worker, and one that reaches a worker package that does not exist yet (the
    # contract names no module list that a move could leave behind).
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    engine = tmp_path / "stream_workers" / "engine"
    (engine / "violation.py").write_text("from stream_workers.synthesis import Synthesizer\n")
    (engine / "s1mini" / "violation.py").write_text("import stream_workers.newrole.handler\n")
    (tmp_path / "stream_workers" / "newrole").mkdir()
    (tmp_path / "stream_workers" / "newrole" / "__init__.py").write_text("")
    (tmp_path / "stream_workers" / "newrole" / "handler.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = _lint(tmp_path, env)
    assert done.returncode != 0
    assert "imports nothing else of stream_workers BROKEN" in done.stdout, done.stdout
    assert "stream_workers.engine.violation -> stream_workers.synthesis" in done.stdout
    assert "stream_workers.engine.s1mini.violation -> stream_workers.newrole.handler" in done.stdout
    assert ", 1 broken" in done.stdout, done.stdout  # only this contract: the copy keeps every other one
