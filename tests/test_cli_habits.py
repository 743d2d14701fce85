"""Command-line habits (issue 26, item 11): a version, ``python -m loratop``, a guess for a typo."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

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
