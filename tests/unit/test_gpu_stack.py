"""The GPU stack agrees with itself: the torch build the GPU image installs runs on the driver of the EKS
AMI that Karpenter pins (k8s/overlays/eks/gpu-stack.yaml holds the versions and their sources), and the
image, the table, the Karpenter node class and pyproject's s1mini extra name the same versions. The image
has a slim base and no test tools."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.k8s_support import ROOT, load_yaml

STACK = ROOT / "k8s" / "overlays" / "eks" / "gpu-stack.yaml"
DOCKERFILE = ROOT / "Dockerfile.gpu"


def _stack() -> dict[str, Any]:
    return load_yaml(STACK)


def _driver(text: str) -> tuple[int, ...]:
    """An NVIDIA driver version as a tuple of ints ("570.133.20" -> (570, 133, 20))."""
    if not re.fullmatch(r"\d+(\.\d+)+", text):
        raise ValueError(f"not an NVIDIA driver version: {text!r}")
    return tuple(int(p) for p in text.split("."))


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def _torch_pins(dockerfile: Path) -> set[str]:
    runs = [args for op, args in _instructions(dockerfile) if op == "RUN"]
    return set(re.findall(r"\btorch==([0-9][0-9a-z.+]*)", " ".join(runs)))


def _driver_problem(stack: dict[str, Any]) -> str | None:
    """Why the AMI's driver cannot run the pinned torch's CUDA, or None when it can."""
    table = {str(k): str(v) for k, v in stack["cuda_min_driver"].items()}
    cuda = str(stack["torch"]["cuda"])
    if cuda not in table:
        return f"no minimum driver for CUDA {cuda} in {STACK.name}'s cuda_min_driver"
    ami_driver = str(stack["ami"]["nvidia_driver"])
    if _driver(ami_driver) < _driver(table[cuda]):
        return (f"torch {stack['torch']['version']} is a CUDA {cuda} build, which needs NVIDIA driver >= "
                f"{table[cuda]}; the AMI {stack['ami']['alias']} ships {ami_driver}: move the AMI or pin an older torch")
    return None


def test_the_ami_driver_supports_the_cuda_of_the_pinned_torch() -> None:
    assert _driver_problem(_stack()) is None, _driver_problem(_stack())


def test_the_driver_check_refuses_a_torch_whose_cuda_is_newer_than_the_ami_driver() -> None:
    # torch 2.11+ from PyPI is a CUDA 13 build: on this AMI's R570 driver the check must fail.
    stack = _stack()
    cuda13 = {**stack, "torch": {**stack["torch"], "version": "2.11.0", "cuda": "13.0"}}
    assert "needs NVIDIA driver >= 580.65.06" in (_driver_problem(cuda13) or "")
    unknown = {**stack, "torch": {**stack["torch"], "cuda": "11.8"}}
    assert "no minimum driver for CUDA 11.8" in (_driver_problem(unknown) or "")
    older_ami = {**stack, "ami": {**stack["ami"], "nvidia_driver": "560.35.03"}}
    assert _driver_problem(older_ami) is not None
    with pytest.raises(ValueError):
        _driver("570.x")


def test_karpenter_pins_the_ami_the_table_names() -> None:
    classes = [d for d in load_yaml_all(ROOT / "k8s" / "overlays" / "eks" / "karpenter.yaml") if d["kind"] == "EC2NodeClass"]
    assert classes
    alias = _stack()["ami"]["alias"]
    assert re.fullmatch(r"al2023@v\d{8}", alias), f"{alias}: pin a dated AL2023 release, not @latest"
    for node_class in classes:
        assert node_class["spec"]["amiSelectorTerms"] == [{"alias": alias}], node_class["metadata"]["name"]


def test_the_gpu_image_installs_the_pinned_torch_from_the_table_index() -> None:
    stack = _stack()
    version = str(stack["torch"]["version"])
    assert _torch_pins(DOCKERFILE) == {version}, f"Dockerfile.gpu's torch pins {_torch_pins(DOCKERFILE)} != {version}"
    runs = " ".join(args for op, args in _instructions(DOCKERFILE) if op == "RUN")
    torch_install = next(r for r in re.split(r"&&", runs) if f"torch=={version}" in r and "--index-url" in r)
    assert f"--index-url {stack['torch']['index']}" in torch_install
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch_req,) = [r for r in map(Requirement, project["optional-dependencies"]["s1mini"]) if r.name == "torch"]
    assert torch_req.specifier.contains(Version(version)), f"pyproject's s1mini extra ({torch_req}) excludes torch {version}"


def test_the_gpu_image_has_a_slim_pinned_base_two_stages_and_no_test_tools() -> None:
    instructions = _instructions(DOCKERFILE)
    bases = [args.split()[0] for op, args in instructions if op == "FROM"]
    assert len(bases) == 2, "a build stage and a runtime stage"
    for base in bases:
        assert re.fullmatch(r"python:3\.12\.\d+-slim-bookworm", base), f"{base}: not a pinned python slim tag"
        assert "nvidia/cuda" not in base
    runtime = instructions[[i for i, (op, _) in enumerate(instructions) if op == "FROM"][1]:]
    assert not [a for op, a in runtime if op == "RUN" and "pip install" in a], "the runtime stage installs nothing"
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime
    text = " ".join(a for _, a in instructions)
    for tool in ("[test]", ",test]", "pytest", "[dev]"):
        assert tool not in text, f"Dockerfile.gpu installs test tools ({tool})"
    user = [a for op, a in runtime if op == "USER"]
    assert user == ["10001:10001"]


def load_yaml_all(path: Path) -> list[dict[str, Any]]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d]
