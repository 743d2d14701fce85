"""Importing the light layers never loads the heavy ones (each costs seconds over SSH).

The rule reads from ``ls``: ``trainer/`` is the training subprocess (and the callback API) and
the only place that may import the ML stack; every module of ``core/``, ``preflight/``,
``tui/``, ``widgets/`` and ``cli/`` is torch-free. The modules are found by globbing, so there
is no list to keep in step. Each import check runs a fresh interpreter: in this one, other tests may
already have imported torch.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "sample_configs" / "tiny-cpu-demo.yaml"

ML_STACK = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "trl")
LIGHT = ("core", "preflight", "tui", "widgets", "cli")
"""The homes that never import the ML stack (``trainer/`` alone may)."""
TORCH_FREE_CORE = ("core", "preflight")
"""The homes that load neither the ML stack nor Textual (the trainer and the dashboard share them)."""


def _light_files() -> list[Path]:
    return [p for layer in LIGHT for p in sorted((REPO / layer).rglob("*.py"))]


def _module_name(path: Path) -> str:
    parts = ["loratop", *path.relative_to(REPO).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(path: Path) -> list[str]:
    """Every module a file imports, at any depth (a lazy import inside a function counts)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules_after(code: str, cwd: Path = REPO) -> list[str]:
    """Run ``code`` in a fresh interpreter; the names in ``sys.modules`` afterwards."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def _heavy(modules: list[str], banned: tuple[str, ...]) -> list[str]:
    return [name for name in modules if name.split(".")[0] in banned]


TOP_NAMES = ("trainer", "tui", "widgets", "core", "preflight", "cli")
"""The homes' own names: importing one bare would load a second copy (or another project's)."""


def test_no_module_outside_trainer_imports_the_ml_stack_or_the_trainer_even_lazily() -> None:
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _light_files()
        for name in _imported_names(path)
        if name.split(".")[0] in ML_STACK or name.startswith("loratop.trainer") or name.split(".")[0] in TOP_NAMES
    ]
    assert offenders == []


def test_every_module_outside_trainer_imports_without_the_ml_stack() -> None:
    names = [_module_name(path) for path in _light_files()]
    assert {"loratop.core.events", "loratop.cli.main", "loratop.widgets.loss_chart"} <= set(names)
    modules = _modules_after("\n".join(f"import {name}" for name in names))

    assert set(names) <= set(modules)
    assert _heavy(modules, ML_STACK) == []
    # Only loratop's own names: a top-level `trainer` would be a second copy (or someone else's).
    assert [m for m in modules if m.split(".")[0] in TOP_NAMES] == []


def test_the_core_and_preflight_load_no_textual_either() -> None:
    names = [_module_name(p) for p in _light_files() if p.relative_to(REPO).parts[0] in TORCH_FREE_CORE]
    assert "loratop.preflight.config" in names
    modules = _modules_after("\n".join(f"import {name}" for name in names))

    assert _heavy(modules, (*ML_STACK, "textual")) == []


def test_advisor_loads_no_ml_stack_and_no_textual() -> None:
    modules = _modules_after(
        "from loratop.preflight.advisor import advise, gather_facts\n"
        "from loratop.preflight.config import load_config\n"
        f"config = load_config({str(DEMO)!r}, check_files=False)\n"
        "advise(config, gather_facts(config))"
    )

    assert "loratop.preflight.advisor" in modules
    assert _heavy(modules, (*ML_STACK, "textual")) == []


def test_check_command_loads_no_ml_stack(tmp_path: Path) -> None:
    modules = _modules_after(
        f"from loratop.cli.main import main\nassert main(['check', {str(DEMO)!r}]) == 0",
        cwd=tmp_path,
    )

    assert "loratop.preflight.data_files" in modules
    assert _heavy(modules, ML_STACK) == []


def test_dashboard_and_widgets_load_no_ml_stack() -> None:
    modules = _modules_after(
        "import loratop.tui.app, loratop.core.runs, loratop.core.run_state, loratop.tui.models.panels, loratop.widgets"
    )

    assert "loratop.tui.app" in modules and "textual" in modules
    assert _heavy(modules, ML_STACK) == []
    # The config schema (pydantic) is loaded only when a config is read, not to open the dashboard.
    assert _heavy(modules, ("pydantic", "pydantic_core")) == []


def test_widgets_import_neither_the_app_nor_the_trainer() -> None:
    modules = _modules_after(
        "import loratop.widgets, loratop.widgets.loss_chart, loratop.widgets.memory_panel, loratop.widgets.downsample"
    )

    assert [
        m for m in modules if m.startswith(("loratop.tui", "loratop.trainer")) or m.split(".")[0] in ("tui", "trainer")
    ] == []
