"""The compose file's schema registry, run natively: real Karapace with compose's entrypoint and environment.

Karapace is not published on PyPI (only as the ghcr.io image and its source), and its source needs
two things no package registry here serves: Aiven's patched ``avro`` (a GitHub tarball pinned in its
requirements) and ``protopacelib``, a Go shared library for its protobuf support, built with Go >= 1.21
and modules from the Go proxy. So ``make install`` cannot build it, and CI has no Karapace: there the
compose boot test falls back to ``tests/registry_standin.py`` and the real-registry test skips, saying
why.

Where a Karapace of the compose file's version is installed, the tests use it: the Python of
``$VOICENOTE_KARAPACE_PYTHON``, else ``.venv-karapace/bin/python`` in the checkout, which
``make karapace KARAPACE_SRC=<source tree>`` builds (tests/karapace_venv.sh: what it substitutes, and why).

The service is started as compose would: the ``entrypoint`` as written (``python3`` is that Python),
``KARAPACE_*`` from the compose file, with only the broker address, host and port mapped to loopback
and the schema topic and group renamed per test; ready is compose's own healthcheck command passing.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from ops.services import free_port

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv-karapace" / "bin" / "python"
_PROBE = ("import importlib.util, karapace.version as v; "
          "print(v.__version__, importlib.util.find_spec('karapace.__main__') is not None)")


def pinned_version(service: dict[str, Any]) -> str:
    return str(service["image"]).rpartition(":")[2]


def find_karapace() -> tuple[Path | None, str]:
    """(the Python that has Karapace, its version) or (None, why there is none here)."""
    configured = os.environ.get("VOICENOTE_KARAPACE_PYTHON")
    python = Path(configured) if configured else VENV_PYTHON
    if not python.exists():
        return None, (f"no Karapace here ({python} does not exist): it is not on PyPI and its build needs a GitHub "
                      "tarball (patched avro) and Go >= 1.21 (protopacelib), so `make install` cannot provide it; "
                      "`make karapace KARAPACE_SRC=<source tree>` builds one")
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return None, f"{python} has no usable karapace: {probe.stderr.strip().splitlines()[-1:]}"
    return python, probe.stdout.split()[0]


class NativeKarapace:
    """compose's ``schema-registry`` service as a process on loopback."""

    def __init__(self, python: Path, service: dict[str, Any], environment: dict[str, str], *, bootstrap: str,
                 unique: str, log: Path) -> None:
        self.python, self.service, self.log_path = python, service, log
        self.port = free_port()
        env = dict(environment)
        self.compose_port = int(env["KARAPACE_PORT"])
        env.update({"KARAPACE_BOOTSTRAP_URI": bootstrap, "KARAPACE_HOST": "127.0.0.1", "KARAPACE_PORT": str(self.port),
                    "KARAPACE_ADVERTISED_HOSTNAME": "127.0.0.1",
                    # Isolation only renames: this test's own schema topic and election group on the shared broker.
                    "KARAPACE_TOPIC_NAME": f"{unique}.{env.get('KARAPACE_TOPIC_NAME', '_schemas')}",
                    "KARAPACE_GROUP_ID": f"{unique}.schema-registry"})
        self.env = env
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        entrypoint = [str(a) for a in self.service["entrypoint"]]
        assert re.fullmatch(r"python3?", entrypoint[0]), f"schema-registry's entrypoint is not a Python: {entrypoint}"
        return [str(self.python), *entrypoint[1:], *[str(a) for a in self.service.get("command", [])]]

    def healthcheck(self) -> list[str]:
        test = [str(a) for a in self.service["healthcheck"]["test"]]
        assert test[0] == "CMD" and re.fullmatch(r"python3?", test[1]), test
        return [str(self.python), *(a.replace(f"127.0.0.1:{self.compose_port}", f"127.0.0.1:{self.port}") for a in test[2:])]

    def start(self, timeout: float = 120) -> NativeKarapace:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KARAPACE_", "PYTHON"))}
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), env=env, cwd=self.log_path.parent, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"karapace exited with {self.proc.returncode}; log:\n{self.log()}")
            if subprocess.run(self.healthcheck(), capture_output=True, timeout=30).returncode == 0:
                return self
            time.sleep(1)
        raise AssertionError(f"karapace not healthy (compose's healthcheck) in {timeout}s; log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
