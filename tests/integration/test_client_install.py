"""voicenote-client installs alone: ``pip install ./clients/python`` into a fresh virtualenv pulls in its three
dependencies (and theirs) and nothing of the server, imports without Faust, torch, pydantic or any server
package, stays small, and writes what the server reads.

Needs a package index (PyPI, or the machine's pip configuration); offline it skips, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.codec import Codecs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "clients" / "python"
DEPENDENCIES = {"confluent-kafka", "fastavro", "httpx"}
# httpx's own dependencies; anything else in the venv came from somewhere it should not.
TRANSITIVE = {"anyio", "certifi", "h11", "httpcore", "idna", "sniffio", "typing-extensions", "exceptiongroup"}
SERVER_MODULES = {"faust", "torch", "pydantic", "pydantic_settings", "onnxruntime", "piper", "moto", "valkey", "redis",
                  "aiokafka", "fastapi", "starlette", "numpy", "voicenote", "schemas", "producer_api", "stream_workers", "ops"}
OFFLINE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable", "ProxyError",
           "Max retries exceeded", "No matching distribution found for setuptools")

PROBE = """
import json, sys, voicenote_client, voicenote_client.aio
from importlib import metadata
client = voicenote_client.VoicenoteClient({"bootstrap.servers": "unused:9092"}, topic_prefix="t.")
record = client.request("Hello from a fresh venv.", voice="nova", job_id="job_fresh")
print(json.dumps({
    "file": voicenote_client.__file__,
    "modules": sorted({m.split(".")[0] for m in sys.modules}),
    "requires": metadata.requires("voicenote-client"),
    "installed": sorted(d.metadata["Name"] for d in metadata.distributions()),
    "encoded": client.encode(record).hex(),
}))
"""


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def install_into_fresh_venv(venv: Path, *pip_args: str) -> tuple[Path, dict[str, str]]:
    """A new virtualenv at ``venv`` with ``pip install *pip_args`` done: its python, and an environment without this
    checkout on the path. Skips when no package index answers (the build needs setuptools from one)."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pip_args],
                               capture_output=True, text=True, timeout=300, env=env)
    if installed.returncode != 0 and any(sign in installed.stdout + installed.stderr for sign in OFFLINE):
        pytest.skip(f"no package index reachable: {installed.stderr.strip().splitlines()[-1:]}")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python, env


def test_the_client_installs_alone_into_a_fresh_venv(tmp_path: Path) -> None:
    # Build from a copy: an in-tree build leaves build/ and *.egg-info in the checkout.
    source = tmp_path / "src"
    shutil.copytree(SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    started = time.monotonic()
    python, env = install_into_fresh_venv(venv, str(source))
    install_s = time.monotonic() - started

    # Run from elsewhere, so this checkout's packages are not on the path.
    probe = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    site = next((venv / "lib").glob("python*/site-packages"))
    assert Path(found["file"]).is_relative_to(site)

    # The declared dependencies, and what actually got installed.
    assert {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in found["requires"]} == DEPENDENCIES
    names = {n.lower().replace("_", "-") for n in found["installed"]} - {"pip", "setuptools", "voicenote-client"}
    assert names <= DEPENDENCIES | TRANSITIVE, f"unexpected distributions: {sorted(names - DEPENDENCIES - TRANSITIVE)}"
    assert DEPENDENCIES <= names
    assert not SERVER_MODULES & set(found["modules"]), sorted(SERVER_MODULES & set(found["modules"]))

    # Small: the package is its code and the schemas; with every dependency, tens of MB (the server distribution pulls in Faust, onnxruntime, Piper, torch...).
    package_kb = size(site / "voicenote_client") / 1024
    deps_mb = sum(size(p) for p in site.iterdir() if p.name.split("-")[0].split(".")[0] not in ("pip", "setuptools", "pkg_resources",
                                                                                             "_distutils_hack")) / 2**20
    assert package_kb < 400, f"voicenote_client is {package_kb:.0f} KB installed"
    assert deps_mb < 80, f"voicenote-client and its dependencies take {deps_mb:.0f} MB"

    # The installed package (its packaged schemas) writes what the server reads.
    record = Codecs().request.decode(bytes.fromhex(found["encoded"]))
    assert (record["job_id"], record["voice"], record["text"]) == ("job_fresh", "en_US-joe-medium", "Hello from a fresh venv.")
    print(f"fresh venv install: {install_s:.1f} s; voicenote_client {package_kb:.0f} KB, with dependencies {deps_mb:.1f} MB")


# What the Dockerfiles COPY before `pip install .`: the server's packages and the client's source root.
SERVER_TREE = ("pyproject.toml", "README.md", "schemas", "voicenote", "producer_api", "stream_workers", "ops", "clients/python/src")
SPEC_PROBE = """
import importlib.util, json
from importlib import metadata
print(json.dumps({
    "client": importlib.util.find_spec("voicenote_client").origin,
    "server": importlib.util.find_spec("voicenote.client").origin,
    "files": sorted(str(f) for f in metadata.files("voicenote") or [] if str(f).startswith("voicenote_client/")),
}))
"""


@pytest.mark.parametrize("editable", [False, True], ids=["pip-install", "pip-install-e"])
def test_the_server_distribution_ships_the_client_it_is_built_on(tmp_path: Path, editable: bool) -> None:
    """voicenote.client imports voicenote_client: `pip install .` and `pip install -e .` of the server bring it along."""
    source = tmp_path / "server"
    for name in SERVER_TREE:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("build", "*.egg-info", "__pycache__")}
                                             if copy is shutil.copytree else {}))
    venv = tmp_path / "venv"
    # --no-deps: the server's dependencies are not what this checks (and are hundreds of MB).
    python, env = install_into_fresh_venv(venv, "--no-deps", *(["-e"] if editable else []), str(source))
    probe = subprocess.run([str(python), "-c", SPEC_PROBE], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    if editable:  # from the source tree, where the editable finder maps both roots
        assert Path(found["client"]) == source / "clients" / "python" / "src" / "voicenote_client" / "__init__.py"
        assert Path(found["server"]) == source / "voicenote" / "client.py"
    else:
        site = next((venv / "lib").glob("python*/site-packages"))
        assert Path(found["client"]) == site / "voicenote_client" / "__init__.py"
        shipped = set(found["files"])
        packaged = {str(p.relative_to(source / "clients" / "python" / "src")) for p in
                    (source / "clients" / "python" / "src" / "voicenote_client").rglob("*")
                    if p.is_file() and p.suffix in (".py", ".avsc", ".typed")}
        assert packaged and packaged <= shipped, sorted(packaged - shipped)  # the code, every schema and py.typed
