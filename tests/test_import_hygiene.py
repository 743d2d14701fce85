"""Importing the light layers never loads the heavy ones (each costs seconds over SSH).

Each check runs a fresh interpreter: in this one, other tests may already have
imported torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "sample_configs" / "tiny-cpu-demo.yaml"

ML_STACK = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "trl")


def _modules_after(code: str, cwd: Path = REPO) -> list[str]:
    """Run ``code`` in a fresh interpreter; the names in ``sys.modules`` afterwards."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def _heavy(modules: list[str], banned: tuple[str, ...]) -> list[str]:
    return [name for name in modules if name.split(".")[0] in banned]


def test_protocol_and_config_load_no_ml_stack_and_no_textual() -> None:
    modules = _modules_after("import trainer.events, trainer.config")

    assert "trainer.config" in modules
    assert _heavy(modules, (*ML_STACK, "textual")) == []


def test_advisor_loads_no_ml_stack_and_no_textual() -> None:
    modules = _modules_after(
        "from trainer.advisor import advise, gather_facts\n"
        "from trainer.config import load_config\n"
        f"config = load_config({str(DEMO)!r}, check_files=False)\n"
        "advise(config, gather_facts(config))"
    )

    assert "trainer.advisor" in modules
    assert _heavy(modules, (*ML_STACK, "textual")) == []


def test_cli_modules_load_no_ml_stack() -> None:
    modules = _modules_after(
        "import trainer.events, trainer.config, trainer.data_files, trainer.run_dir\n"
        "import tui.cli, tui.headless, tui.launcher"
    )

    assert "tui.launcher" in modules
    assert _heavy(modules, ML_STACK) == []


def test_check_command_loads_no_ml_stack(tmp_path: Path) -> None:
    modules = _modules_after(
        f"from tui.cli import main\nassert main(['check', {str(DEMO)!r}]) == 0",
        cwd=tmp_path,
    )

    assert "trainer.data_files" in modules
    assert _heavy(modules, ML_STACK) == []


def test_dashboard_and_widgets_load_no_ml_stack() -> None:
    modules = _modules_after("import tui.app, tui.runs, tui.run_state, tui.panels, widgets")

    assert "tui.app" in modules and "textual" in modules
    assert _heavy(modules, ML_STACK) == []


def test_widgets_import_neither_the_app_nor_the_trainer() -> None:
    modules = _modules_after("import widgets, widgets.loss_chart, widgets.memory_panel, widgets.downsample")

    assert [m for m in modules if m.split(".")[0] in ("tui", "trainer")] == []
