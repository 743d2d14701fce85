"""The offline GPU bundle (scripts/gpu_bundle.txt) covers loratop's requirements.

The borrowed GPU machine has no network: every requirement of loratop[gpu], followed through
the installed packages' own requirements, must be on that machine (scripts/gpu_machine.txt)
or in the bundle, at a version that satisfies it. A dependency added to pyproject.toml
without a wheel in the bundle fails here, not in a GPU call. scripts/gpu_rehearsal.sh proves
the same by installing offline into a venv like the machine's.
"""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

# The borrowed machine: CPython 3.12 on x86-64 Linux.
TARGET = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_machine": "x86_64", "sys_platform": "linux", "os_name": "posix", "platform_system": "Linux",
    "platform_python_implementation": "CPython",
}  # fmt: skip


def _pins(path: Path) -> dict[str, Version | None]:
    """``name==version`` or ``name`` lines (comments after ``#``) as {canonical name: version}."""
    pins: dict[str, Version | None] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        key = canonicalize_name(name)
        assert key not in pins, f"{path.name}: {name} is listed twice"
        pins[key] = Version(version) if version else None
    return pins


BUNDLE = _pins(REPO / "scripts" / "gpu_bundle.txt")
MACHINE = _pins(REPO / "scripts" / "gpu_machine.txt")


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**TARGET, "extra": extra}) for extra in extras or {""})


def _requirements(dist: str, extras: set[str]) -> list[Requirement]:
    return [req for req in map(Requirement, md.requires(dist) or []) if _applies(req, extras)]


def test_every_bundle_line_is_an_exact_pin() -> None:
    assert BUNDLE, "scripts/gpu_bundle.txt is empty"
    unpinned = [name for name, version in BUNDLE.items() if version is None]
    assert not unpinned, f"pin these to one version: {unpinned}"


def test_bundle_and_machine_cover_every_requirement_of_loratop_gpu() -> None:
    """Walk loratop[gpu]'s requirements: each is on the machine (at a known version that fits,
    or the bundle carries one that does) or in the bundle at a version that fits."""
    problems: list[str] = []
    seen: set[str] = set()
    todo: list[tuple[str, Requirement]] = [("loratop", r) for r in _requirements("loratop", {"gpu"})]
    while todo:
        parent, req = todo.pop()
        name = canonicalize_name(req.name)
        bundled, on_machine = name in BUNDLE, name in MACHINE
        if not bundled and not on_machine:
            problems.append(f"{parent} needs {req}: neither on the GPU machine nor in scripts/gpu_bundle.txt")
            continue
        if bundled:
            pinned = BUNDLE[name]
            if pinned is not None and not req.specifier.contains(pinned, prereleases=True):
                problems.append(f"{parent} needs {req}, the bundle pins {name}=={pinned}")
        elif MACHINE[name] is not None and not req.specifier.contains(MACHINE[name], prereleases=True):  # type: ignore[arg-type]
            problems.append(f"{parent} needs {req}, the machine has {name}=={MACHINE[name]} and the bundle none")
        if name in seen or not bundled:
            continue  # what the machine has comes with its own requirements met
        seen.add(name)
        try:
            todo += [(name, r) for r in _requirements(name, set(req.extras))]
        except md.PackageNotFoundError:
            # Not installed here (cupti-python on a CPU box): scripts/gpu_rehearsal.sh checks it.
            continue
    assert not problems, "\n".join(problems)


def test_the_build_backend_is_in_the_bundle() -> None:
    """pip builds loratop in an isolated env that starts empty: the backend must travel."""
    build_system = (REPO / "pyproject.toml").read_text().split("[build-system]", 1)[1].split("\n[", 1)[0]
    requires = re.search(r"requires\s*=\s*\[(.*?)\]", build_system, re.S)
    assert requires, "pyproject.toml has no build-system.requires"
    for spec in re.findall(r'"([^"]+)"', requires.group(1)):
        req = Requirement(spec)
        assert canonicalize_name(req.name) in BUNDLE, f"build requirement {spec} is not in scripts/gpu_bundle.txt"
        assert req.specifier.contains(BUNDLE[canonicalize_name(req.name)])  # type: ignore[arg-type]
    assert "editables" in BUNDLE, "hatchling needs editables for `pip install -e`"


@pytest.mark.parametrize("script", ["gpu_bundle.sh", "gpu_check.sh", "gpu_rehearsal.sh"])
def test_scripts_are_executable_and_strict(script: str) -> None:
    path = REPO / "scripts" / script
    assert path.stat().st_mode & 0o111, f"chmod +x scripts/{script}"
    assert re.search(r"^set -e?uo pipefail$", path.read_text(), re.M), f"scripts/{script}: set -uo pipefail"
