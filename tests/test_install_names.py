"""loratop's importable names are its own (issue 11, item 7).

The wheel installs one top-level package, ``loratop`` (the folders tui/, trainer/ and
widgets/ go inside it), so a ``trainer`` or ``tui`` package from another project (Coqui's
trainer, say) and loratop can live side by side. The launcher starts the trainer so that
the working folder cannot shadow it: a ``trainer.py``, ``tui.py`` or ``widgets/`` there,
or a ``datasets.py`` that would shadow a library the trainer needs, changes nothing.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, of_type, read_events


def _pip(command: str, *args: str) -> None:
    """``pip COMMAND --quiet --no-deps ARGS``, which must succeed (its stderr is the message)."""
    argv = [sys.executable, "-m", "pip", command, "--quiet", "--no-deps", *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "--no-build-isolation", "-w", str(out), str(REPO))
    (built,) = out.glob("loratop-*.whl")
    return built


def test_the_wheel_installs_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"loratop", wheel.name.split("-py3")[0] + ".dist-info"}
    for module in ("loratop/cli/main.py", "loratop/core/events.py", "loratop/trainer/train.py",
                   "loratop/widgets/loss_chart.py", "loratop/preflight/sample_configs/tiny-cpu-demo.yaml",
                   "loratop/preflight/embedded/tool_chat.jsonl", "loratop/preflight/model_shapes.json",
                   "loratop/tui/app.tcss", "loratop/tui/models/panels.py",
                   "loratop/cli/serve_templates/app_index.html"):  # fmt: skip
        assert module in names
    entry_points = zipfile.ZipFile(wheel).read(wheel.name.split("-py3")[0] + ".dist-info/entry_points.txt").decode()
    assert "loratop = loratop.cli.main:main" in entry_points


def test_a_package_named_trainer_installed_beside_it_leaves_both_importable(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    _pip("install", "--no-index", "--target", str(site), str(wheel))
    for other in ("trainer", "tui"):  # what Coqui's trainer and the `tui` project install
        (site / other).mkdir()
        (site / other / "__init__.py").write_text(f"OWNER = 'another project: {other}'\n")
    probe = (
        "import trainer, tui, loratop.core.events as events, loratop.preflight.config, loratop.preflight.samples as s\n"
        "assert trainer.OWNER == 'another project: trainer' and tui.OWNER == 'another project: tui'\n"
        f"assert events.__file__.startswith({str(site)!r}), events.__file__\n"
        "assert s.samples_dir() is not None and (s.samples_dir() / 'tiny-cpu-demo.yaml').is_file()\n"
        "from loratop.preflight.model_config import shipped_config\n"
        "assert shipped_config('meta-llama/Llama-3.1-70B-Instruct').data['num_hidden_layers'] == 80\n"
        "print('ok')\n"
    )
    # -I: no PYTHONPATH, no working folder; the target goes first, as an installed wheel would.
    run = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n" + probe],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


@pytest.mark.slow
def test_a_trainer_py_tui_py_and_widgets_in_the_working_folder_change_nothing(tmp_path: Path) -> None:
    work = tmp_path / "my-finetune-repo"
    work.mkdir()
    poison = "import sys\nprint('the working folder shadowed loratop: {}')\nsys.exit(3)\n"
    (work / "trainer.py").write_text(poison.format("trainer.py"))
    (work / "tui.py").write_text(poison.format("tui.py"))
    (work / "datasets.py").write_text(poison.format("datasets.py"))  # HF datasets, as the trainer imports it
    (work / "widgets").mkdir()
    (work / "widgets" / "__init__.py").write_text(poison.format("widgets/"))
    loratop = Path(sys.executable).parent / "loratop"
    result = subprocess.run(
        [str(loratop), "run", "tiny-cpu-demo", "--no-tui", "--set", "training.max_steps=3",
         "--set", "data.max_rows=64", "--set", "output_dir=runs/shadow"],
        cwd=work, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run_dir = work / "runs" / "shadow"
    assert "shadowed" not in result.stdout + result.stderr + (run_dir / "trainer.log").read_text()
    events = read_events(run_dir)
    assert [e["step"] for e in of_type(events, "step")] == [1, 2, 3]
    assert of_type(events, "run_finished")[0]["status"] == "completed"
