"""The torch floor in pyproject.toml covers the torch APIs the S1-mini engine uses.

``F.scaled_dot_product_attention(..., enable_gqa=...)`` needs torch 2.5 and ``nn.RMSNorm`` 2.4, so every
torch requirement must say ``>=2.5`` (or higher); this keeps the floor from silently regressing.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
FLOOR = Version("2.5")


def _torch_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs.extend(extra)
    return [r for r in map(Requirement, specs) if r.name.lower() == "torch"]


def test_every_torch_requirement_has_a_floor_of_at_least_2_5() -> None:
    reqs = _torch_requirements()
    assert reqs, "no torch requirement in pyproject.toml (the s1mini extra needs one)"
    for req in reqs:
        floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=", ">")]
        assert floors, f"{req}: no lower bound"
        assert max(floors) >= FLOOR, f"{req}: floor below {FLOOR} (enable_gqa needs 2.5, nn.RMSNorm 2.4)"
        assert not req.specifier.contains("2.4.1"), f"{req} admits torch 2.4"


def test_makefile_torch_pin_meets_the_floor() -> None:
    pins = re.findall(r"torch==([0-9][0-9.]*)", (ROOT / "Makefile").read_text(encoding="utf-8"))
    for pin in pins:
        assert Version(pin) >= FLOOR, f"Makefile pins torch {pin}, below the floor {FLOOR}"
