"""Command-line habits (issue 26, item 11): a version, ``python -m loratop``, a guess for a typo."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from typing import Any

import pytest

import loratop
from loratop.cli import main as cli


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    assert loratop.__version__ == metadata.version("loratop")
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"loratop {loratop.__version__}\n"


def test_python_dash_m_loratop_is_the_loratop_command() -> None:
    result = subprocess.run([sys.executable, "-m", "loratop", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"loratop {loratop.__version__}"


@pytest.mark.parametrize(
    ("typed", "guess"), [("atach", "; did you mean attach?"), ("lss", "; did you mean ls?"), ("zzz", "")]
)
def test_a_mistyped_command_is_one_line_with_the_closest(
    typed: str, guess: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([typed, "some-run"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"loratop: no command {typed!r}{guess} (commands: run, check, estimate, fit, demo, edit, attach, ls, compare, "
        "export, next, serve)"
    ]


def test_a_detach_after_launching_from_the_editor_says_how_to_come_back(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`loratop edit` → launch → detach: the run goes on, and the CLI names it, as `loratop run`
    does (`next --edit` goes the same way). The app is not run here: its session is said to have
    ended detached on the run launched from the editor (what tests/test_dashboard.py drives for real)."""
    from loratop.tui.screens.monitor_screen import DETACHED
    from tests.conftest import DEMO_CONFIG

    runs = tmp_path / "runs"
    launched = runs / "tiny-cpu-demo-20261205-050000"

    def detached_on_the_launched_run(app: Any) -> tuple[str | None, int]:
        app.ended_on = launched
        return DETACHED, 0

    monkeypatch.setattr(cli, "run_app", detached_on_the_launched_run)
    assert cli.main(["edit", str(DEMO_CONFIG), "--runs-dir", str(runs)]) == 0
    assert f"Come back with: loratop attach {launched}" in capsys.readouterr().out
