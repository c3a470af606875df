"""The GPU workers' init container: the checkpoint synced from S3 to local disk, every file's hash checked.

Runs the manifest's own script with ``sh``, an ``aws`` stand-in on PATH that copies from a local folder
(the S3 side is AWS's own CLI; what is ours is the hash check), and coreutils' sha256sum.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.k8s_support import rendered

pytestmark = pytest.mark.skipif(shutil.which("sha256sum") is None, reason="no sha256sum (coreutils) here")


def _init_container() -> dict:
    deployment = next(o for o in rendered("eks") if o["metadata"]["name"] == "voicenote-worker-s1mini-warm")
    (init,) = [c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == "model-sync"]
    return init


def _bucket(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "bucket"
    src.mkdir()
    (src / "model.pth").write_bytes(b"weights" * 1000)
    (src / "codec.pth").write_bytes(b"codec" * 1000)
    (src / "config.json").write_text('{"dim": 8}')
    sums = "".join(f"{hashlib.sha256((src / n).read_bytes()).hexdigest()}  {n}\n" for n in ("codec.pth", "config.json", "model.pth"))
    (src / "SHA256SUMS").write_text(sums)
    return src, hashlib.sha256(sums.encode()).hexdigest()


def _run(tmp_path: Path, src: Path, pinned: str) -> subprocess.CompletedProcess[str]:
    init = _init_container()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    aws = bin_dir / "aws"
    # `aws s3 sync [flags] SRC DST`: the last two arguments; SRC's s3:// URI maps to the local folder.
    aws.write_text(f'#!/bin/sh\nfor a; do s="$d"; d="$a"; done\nmkdir -p "$d" && cp -R {src}/. "$d"/\n')
    aws.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MODEL_URI": "s3://voicenote-models/s1/", "MODEL_SHA256SUMS_SHA256": pinned,
           "MODEL_DIR": str(tmp_path / "models" / "openaudio-s1-mini")}
    assert init["command"][:2] == ["/bin/sh", "-ec"]
    return subprocess.run(["/bin/sh", "-ec", init["args"][0]], env=env, capture_output=True, text=True, timeout=60)


def test_a_checkpoint_whose_files_match_their_hashes_is_delivered(tmp_path: Path) -> None:
    src, pinned = _bucket(tmp_path)
    done = _run(tmp_path, src, pinned)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "models" / "openaudio-s1-mini" / "model.pth").read_bytes() == (src / "model.pth").read_bytes()


def test_a_changed_file_stops_the_pod(tmp_path: Path) -> None:
    src, pinned = _bucket(tmp_path)
    (src / "model.pth").write_bytes(b"weights" * 999 + b"tampered")
    done = _run(tmp_path, src, pinned)
    assert done.returncode != 0
    assert "model.pth: FAILED" in done.stdout + done.stderr


def test_a_hash_list_other_than_the_pinned_one_stops_the_pod(tmp_path: Path) -> None:
    src, _ = _bucket(tmp_path)
    done = _run(tmp_path, src, "0" * 64)
    assert done.returncode != 0
    assert "SHA256SUMS: FAILED" in done.stdout + done.stderr
