"""The layering contract (pyproject.toml [tool.importlinter]) holds, and it does catch a back-arrow."""

from __future__ import annotations

import ast
import os
import shutil
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
    (tmp_path / "stream_workers" / "engine").mkdir()  # the engine-below-the-worker contract names it
    (tmp_path / "stream_workers" / "engine" / "__init__.py").write_text("")
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def _lint(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=240)


def test_the_tree_keeps_every_layering_contract() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 kept, 0 broken" in done.stdout


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
    assert "4 kept, 2 broken" in done.stdout, done.stdout  # the Kafka-libraries, engine and worker contracts hold there
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
    assert "5 kept, 1 broken" in done.stdout, done.stdout
    assert "stream_workers.dispatcher -> confluent_kafka" in done.stdout
    assert "voicenote.client -> aiokafka" in done.stdout
    assert "voicenote.kafka.clients -> confluent_kafka" not in done.stdout
    assert "stream_workers.runtime.faust_driver -> aiokafka" not in done.stdout


def test_a_role_importing_another_role_or_the_runtime_a_role_breaks_the_build(tmp_path: Path) -> None:
    # Worker roles as packages (issue 20): synthesis, completion and webhooks import runtime and the engine, never
    # each other; runtime imports no role. Through a third module too.
    env = _stand_in(tmp_path)
    (tmp_path / "stream_workers" / "runtime" / "context.py").write_text("")
    (tmp_path / "stream_workers" / "runtime" / "metrics.py").write_text("import stream_workers.completion.status\n")
    (tmp_path / "stream_workers" / "synthesis" / "loop.py").write_text(
        "import stream_workers.runtime.context\nimport stream_workers.engine\nimport stream_workers.webhooks.policy\n")
    (tmp_path / "stream_workers" / "webhooks" / "policy.py").write_text("")
    (tmp_path / "stream_workers" / "completion" / "status.py").write_text("import stream_workers.runtime.context\n")
    done = _lint(tmp_path, env)
    assert done.returncode != 0
    assert "4 kept, 2 broken" in done.stdout, done.stdout
    assert "stream_workers.synthesis.loop -> stream_workers.webhooks.policy" in done.stdout
    assert "stream_workers.runtime.metrics -> stream_workers.completion.status" in done.stdout
    assert "stream_workers.synthesis.loop -> stream_workers.runtime.context" not in done.stdout


# -- no private cross-module imports --------------------------------------------------------------------------------


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(root: Path, module: str) -> bool:
    return (root / module.replace(".", "/") / "__init__.py").is_file()


def _is_module(root: Path, module: str) -> bool:
    return _is_package(root, module) or (root / (module.replace(".", "/") + ".py")).is_file()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(root: Path, path: Path) -> list[str]:
    """Each use in ``path`` of another project module's private name, as ``importer:line -> module.name``.

    The rule (docs/architecture.md, "No private cross-module imports"):
    - A name with one leading underscore (``_name``, not a ``__dunder__``) belongs to the module that defines it.
      No other module imports it (``from m import _name``) or reads it (``m._name``), its own package included.
    - A module whose name has a leading underscore (``pkg/_impl.py``) belongs to its package: modules inside
      that package (at any depth) may import it and use its public names; nothing outside may.
    Only our packages count (``PACKAGES``); private names of libraries are another matter (faust_driver fences those).
    """
    importer = _module_name(root, path)
    package = importer if _is_package(root, importer) else importer.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []

    def ours(module: str) -> bool:
        return module.split(".")[0] in PACKAGES

    def check_path(module: str, line: int) -> None:
        """``module`` (a dotted module path) is used by ``importer``: a private component must enclose it."""
        parts = module.split(".")
        for i, part in enumerate(parts[1:], start=1):
            if _private(part):
                owner = ".".join(parts[:i])
                if not (importer == owner or importer.startswith(owner + ".")):
                    found.append(f"{importer}:{line} -> {'.'.join(parts[:i + 1])}")
                return

    def check_name(module: str, name: str, line: int) -> None:
        """``name`` taken from project module ``module``."""
        if _is_module(root, f"{module}.{name}"):
            check_path(f"{module}.{name}", line)
        elif _private(name) and module != importer:
            found.append(f"{importer}:{line} -> {module}.{name}")

    aliases: dict[str, str] = {}  # a local name -> the project module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not ours(alias.name):
                    continue
                check_path(alias.name, node.lineno)
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not ours(module):
                continue
            check_path(module, node.lineno)
            for alias in node.names:
                if alias.name == "*":
                    continue
                check_name(module, alias.name, node.lineno)
                if _is_module(root, f"{module}.{alias.name}"):
                    aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain: list[str] = [node.attr]
        value: ast.expr = node.value
        while isinstance(value, ast.Attribute):
            chain.insert(0, value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in aliases:
            continue
        module = aliases[value.id]
        for part in chain:  # walk down the dotted path while it names modules; the first name after is the use
            if _is_module(root, f"{module}.{part}"):
                check_path(f"{module}.{part}", node.lineno)
                module = f"{module}.{part}"
                continue
            check_name(module, part, node.lineno)
            break
    return sorted(set(found), key=lambda use: int(use.partition(" -> ")[0].rpartition(":")[2]))


def tree_private_uses(root: Path) -> list[str]:
    return [use for name in PACKAGES for path in sorted((root / name).rglob("*.py")) for use in private_uses(root, path)]


# Known exceptions, "importer -> module.name" (none now: the worker-roles step made the last ones public). An entry
# the tree no longer has fails the test, so the list only shrinks.
ALLOWED_PRIVATE_USES: set[str] = set()


def _without_line(use: str) -> str:
    importer, _, target = use.partition(" -> ")
    return f"{importer.partition(':')[0]} -> {target}"


def test_no_module_uses_another_modules_private_names() -> None:
    uses = tree_private_uses(ROOT)
    broken = [use for use in uses if _without_line(use) not in ALLOWED_PRIVATE_USES]
    assert broken == [], "private names used from another module (make them public, or keep them where they are used):\n" \
        + "\n".join(broken)
    stale = ALLOWED_PRIVATE_USES - {_without_line(use) for use in uses}
    assert not stale, f"no longer in the tree, remove from ALLOWED_PRIVATE_USES: {sorted(stale)}"


def test_a_private_name_used_from_another_module_is_caught(tmp_path: Path) -> None:
    files = {
        "schemas/__init__.py": "",
        "voicenote/__init__.py": "",
        "voicenote/audio.py": "_CODECS = {}\nCODECS = _CODECS\nprint(_CODECS)\n",  # its own private name: fine
        "voicenote/kafka/__init__.py": "from voicenote.kafka._impl import thing\nfrom . import _impl\n",
        "voicenote/kafka/_impl.py": "thing = 1\n_hidden = 2\n",
        "voicenote/kafka/clients.py": "from ._impl import thing\nfrom voicenote.kafka import _impl\nx = _impl.thing\n",
        "producer_api/__init__.py": "",
        "producer_api/services/__init__.py": "",
        "producer_api/services/sync.py": "_RECHECK_SECONDS = 2.0\n__all__ = ['x']\n",
        # The violations, one per spelling:
        "producer_api/streaming.py": (
            "from voicenote.audio import CODECS, _CODECS\n"                    # 1: from X import _name
            "import voicenote.audio\n"
            "import voicenote.audio as va\n"
            "from voicenote import audio\n"
            "def f():\n"
            "    from producer_api.services.sync import _RECHECK_SECONDS\n"   # 2: inside a function
            "    return voicenote.audio._CODECS\n"                            # 3: an attribute of a module
            "x = va._CODECS\n"                                                # 4: ... imported as another name
            "x = audio._CODECS\n"                                             # 5: ... imported from its package
            "from .services import sync\n"
            "y = sync.__all__, sync._RECHECK_SECONDS\n"                       # 6: relative import, attribute
            "from voicenote.kafka._impl import thing\n"                       # 7: a package's private module
            "import voicenote.kafka._impl\n"                                  # 8: the same, imported whole
        ),
        "producer_api/services/batches.py": "from .sync import _RECHECK_SECONDS\n",  # 9: the same package is no excuse
        "voicenote/kafka/topics.py": "from ._impl import _hidden\n",  # 10: a private name of a package-private module
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for name in PACKAGES:
        (tmp_path / name).mkdir(exist_ok=True)
    assert tree_private_uses(tmp_path) == [
        # voicenote first (PACKAGES' order): a package's own modules may use its private module, not its private names
        "voicenote.kafka.topics:1 -> voicenote.kafka._impl._hidden",
        "producer_api.services.batches:1 -> producer_api.services.sync._RECHECK_SECONDS",
        "producer_api.streaming:1 -> voicenote.audio._CODECS",
        "producer_api.streaming:6 -> producer_api.services.sync._RECHECK_SECONDS",
        "producer_api.streaming:7 -> voicenote.audio._CODECS",
        "producer_api.streaming:8 -> voicenote.audio._CODECS",
        "producer_api.streaming:9 -> voicenote.audio._CODECS",
        "producer_api.streaming:11 -> producer_api.services.sync._RECHECK_SECONDS",
        "producer_api.streaming:12 -> voicenote.kafka._impl",
        "producer_api.streaming:13 -> voicenote.kafka._impl",
    ]


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
