"""The knob editor: its pure model (tui.knob_form) and the screen driven with the Pilot.

The slow test is the acceptance loop: edit the demo config, launch the real trainer, rerun
the finished run with changes, and check what each run folder records.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from textual.widgets import Button, Checkbox, Input, Static

from loratop.trainer import events as ev
from loratop.trainer.config import load_config
from loratop.tui import knob_form as form
from loratop.tui.app import LoratopApp
from loratop.tui.screens.knob_editor_screen import KnobEditor
from loratop.tui.screens.monitor_screen import MonitorScreen
from tests.conftest import DEMO_CONFIG, live_status, of_type, read_events, wait_for_exit
from tests.conftest import RECORDED_RUNS as RUNS

# -- the pure model ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(2e-4, "2e-4"), (2e-3, "2e-3"), (1.5e-5, "1.5e-5"), (0.05, "0.05"), (16.0, "16"), (8, "8"), (True, "true")],
)
def test_format_value_reads_like_a_config(value: Any, text: str) -> None:
    assert form.format_value(value) == text


def test_format_value_round_trips_through_parse() -> None:
    knob = form.KNOBS["training.learning_rate"]
    for value in (2e-4, 3.3e-5, 0.0123, 1.0):
        parsed, problem = form.parse_text(knob, form.format_value(value))
        assert problem is None and parsed == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize(
    ("path", "text", "value"),
    [
        ("lora.r", " 16 ", 16),
        ("lora.r", "1_024", 1024),
        ("training.learning_rate", "2e-4", 2e-4),
        ("training.optim", "adamw_torch", "adamw_torch"),
    ],
)
def test_parse_text_accepts(path: str, text: str, value: Any) -> None:
    assert form.parse_text(form.KNOBS[path], text) == (value, None)


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [
        ("lora.r", "abc", "must be a whole number"),
        ("lora.r", "1.5", "must be a whole number"),
        ("lora.r", "", "must be a whole number"),
        ("training.learning_rate", "fast", "must be a number"),
        ("training.learning_rate", "nan", "must be a finite number"),
        ("training.optim", "adam", "not one of"),
    ],
)
def test_parse_text_names_the_field_and_what_it_accepts(path: str, text: str, expected: str) -> None:
    value, problem = form.parse_text(form.KNOBS[path], text)
    assert value is None
    assert problem is not None and problem.startswith(path) and expected in problem


def test_with_values_copies_and_creates_sections() -> None:
    tree: dict[str, Any] = {"lora": {"r": 8, "bias": "none"}}
    changed = form.with_values(tree, {"lora.r": 16, "training.learning_rate": 1e-4})
    assert changed == {"lora": {"r": 16, "bias": "none"}, "training": {"learning_rate": 1e-4}}
    assert tree == {"lora": {"r": 8, "bias": "none"}}


def test_get_path_falls_back_to_the_schema_default() -> None:
    assert form.get_path({"lora": {"r": 4}}, "lora.r") == 4
    assert form.get_path({}, "training.optim") == "paged_adamw_8bit"


def test_every_knob_is_a_real_config_field() -> None:
    for path in form.KNOBS:
        form.get_path({}, path)  # raises AttributeError for a field the schema lacks


def test_new_run_dir_drops_the_parents_stamp_and_never_reuses_a_folder(tmp_path: Path) -> None:
    now = dt.datetime(2026, 11, 28, 14, 0, 5)
    first = form.new_run_dir(tmp_path, "tiny-cpu-demo-20261128-131500", now)
    assert first == tmp_path / "tiny-cpu-demo-20261128-140005"
    first.mkdir()
    assert form.new_run_dir(tmp_path, first.name, now) == tmp_path / "tiny-cpu-demo-20261128-140005-2"


def test_batch_text_counts_steps_from_rows_when_epochs_decide() -> None:
    config = load_config(DEMO_CONFIG, {"training.max_steps": -1, "training.num_train_epochs": 2}, check_files=False)
    text = form.batch_text(config, dataset_rows=3000)
    assert "8×1 = 8" in text and "≈750 steps" in text


# -- the screen ----------------------------------------------------------------------------------


def _note(screen: KnobEditor, path: str) -> Static:
    return screen.query_one(f"#note-{path.replace('.', '-')}", Static)


async def _type(pilot: Any, screen: KnobEditor, path: str, text: str) -> None:
    """Focus a field, erase it with backspace and type ``text``, as a user would."""
    field = screen.query_one(f"#knob-{path.replace('.', '-')}", Input)
    field.focus()
    await pilot.pause()
    field.cursor_position = len(field.value)
    await pilot.press(*["backspace"] * len(field.value), *list(text))
    await pilot.pause()


async def _editor(pilot: Any, app: LoratopApp) -> KnobEditor:
    for _ in range(50):
        if isinstance(app.screen, KnobEditor) and app.screen.dataset_rows is not None:
            return app.screen
        await pilot.pause(0.1)
    raise AssertionError(f"no editor with its facts loaded; screen is {app.screen}")


def test_an_invalid_value_shows_at_its_field_and_cannot_be_launched(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    app = LoratopApp(None, runs_root=runs, edit=DEMO_CONFIG)

    async def drive() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await _editor(pilot, app)
            assert screen.errors == {} and not screen.query_one("#launch", Button).disabled
            await _type(pilot, screen, "lora.r", "0")
            note = _note(screen, "lora.r")
            assert "must be greater than 0" in str(note.render()) and note.has_class("error")
            assert screen.query_one("#launch", Button).disabled
            await _type(pilot, screen, "training.learning_rate", "fast")
            assert "must be a number" in str(_note(screen, "training.learning_rate").render())
            assert set(screen.errors) == {"lora.r", "training.learning_rate"}
            screen.action_launch()  # the key binding, which a disabled button does not stop
            screen.action_save()
            await pilot.pause()
            assert isinstance(app.screen, KnobEditor)
            assert "2 problems" in str(screen.query_one("#effective", Static).render())
            await _type(pilot, screen, "lora.r", "16")
            await pilot.press("enter")  # on to the next field
            assert app.focused is screen.query_one("#knob-lora-lora_alpha", Input)
            await _type(pilot, screen, "training.learning_rate", "1e-3")
            assert screen.errors == {} and not screen.query_one("#launch", Button).disabled
            assert not _note(screen, "lora.r").has_class("error")

    asyncio.run(drive())
    assert not runs.exists(), "nothing may be launched while a field is invalid"
    assert not list(tmp_path.glob("*.yaml"))


def test_the_editor_opens_with_its_first_knob_focused_so_typing_changes_it(tmp_path: Path) -> None:
    app = LoratopApp(None, runs_root=tmp_path / "runs", edit=DEMO_CONFIG)

    async def drive() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await _editor(pilot, app)
            field = screen.query_one("#knob-lora-r", Input)
            assert app.focused is field, f"focused on opening: {app.focused}"
            assert field.value == "8"
            await pilot.press("end", "backspace", "1", "6")  # no tab first
            await pilot.pause()
            assert field.value == "16"
            assert "α/r = 16/16" in str(screen.query_one("#effective", Static).render())

    asyncio.run(drive())


def test_esc_leaves_loratop_edit_and_goes_back_to_the_screen_it_was_opened_from(tmp_path: Path) -> None:
    """``loratop edit`` opens the editor alone: esc leaves the dashboard. From home, esc goes back home."""
    from loratop.tui.screens.home_screen import HomeScreen

    runs = tmp_path / "runs"
    shutil.copytree(RUNS, runs)
    app = LoratopApp(None, runs_root=runs, edit=DEMO_CONFIG)

    async def alone() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await _editor(pilot, app)
            assert not any(isinstance(s, HomeScreen) for s in app.screen_stack)
            await pilot.press("escape")
            await pilot.pause()
            assert app.return_code == 0, "esc in loratop edit must leave, not open the home screen"

    asyncio.run(alone())

    from_home = LoratopApp(None, runs_root=runs)

    async def over_home() -> None:
        async with from_home.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            home = from_home.screen
            assert isinstance(home, HomeScreen)
            await pilot.press("e")
            await _editor(pilot, from_home)
            await pilot.press("escape")
            await pilot.pause()
            assert from_home.screen is home and from_home.return_code is None

    asyncio.run(over_home())


def test_the_editor_shows_advice_at_the_field_and_still_allows_launch(tmp_path: Path) -> None:
    app = LoratopApp(None, runs_root=tmp_path / "runs", edit=DEMO_CONFIG)

    async def drive() -> None:
        async with app.run_test(size=(100, 40)) as pilot:
            screen = await _editor(pilot, app)
            assert screen.dataset_rows == 2850  # 3000 less the 150 held out for eval
            await _type(pilot, screen, "lora.r", "256")
            note = _note(screen, "lora.r")
            assert note.has_class("advice") and "2,850 rows" in str(note.render())
            screen.apply_preset("attention")
            await pilot.pause()
            checked = [c.id for c in screen.query(Checkbox) if c.id and c.id.startswith("target-") and c.value]
            assert checked == ["target-q_proj", "target-k_proj", "target-v_proj", "target-o_proj"]
            assert _note(screen, "lora.target_modules").has_class("advice")
            assert {a.rule for a in screen.advice} == {"rank-vs-data", "attention-only"}
            assert not screen.query_one("#launch", Button).disabled
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                screen.query_one(f"#target-{name}", Checkbox).value = False
            await pilot.pause()
            assert "at least one module" in str(_note(screen, "lora.target_modules").render())
            assert screen.query_one("#launch", Button).disabled

    asyncio.run(drive())


def test_trainable_params_shown_match_what_the_trainer_reported() -> None:
    """The editor's count for r=16 on all seven projections equals the real tiny-r16 run's."""
    started = of_type(read_events(RUNS / "tiny-r16"), ev.RUN_STARTED)[0]
    app = LoratopApp(None, edit=DEMO_CONFIG)

    async def drive() -> str:
        async with app.run_test(size=(100, 40)) as pilot:
            screen = await _editor(pilot, app)
            await _type(pilot, screen, "lora.r", "16")
            for _ in range(20):
                if "trainable" in str(screen.query_one("#effective", Static).render()):
                    break
                await pilot.pause(0.1)
            return str(screen.query_one("#effective", Static).render())

    text = asyncio.run(drive())
    assert f"trainable {started['params']['trainable']:,} adapter params" in text
    assert f"of {started['params']['total']:,}" in text
    assert "n/a (no NVIDIA GPU)" in text


def test_save_writes_a_new_yaml_that_loads_and_never_overwrites(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    app = LoratopApp(None, runs_root=tmp_path / "runs", edit=RUNS / "tiny-r16")

    async def drive() -> None:
        async with app.run_test(size=(100, 40)) as pilot:
            screen = await _editor(pilot, app)
            assert screen.query_one("#knob-lora-r", Input).value == "16"  # prefilled from the run
            await _type(pilot, screen, "lora.lora_dropout", "0.1")
            screen.query_one("#save-path", Input).value = "mine.yaml"
            assert screen.action_save() == Path("mine.yaml")
            await _type(pilot, screen, "lora.lora_dropout", "0.2")
            assert screen.action_save() is None  # exists: refused, nothing overwritten

    asyncio.run(drive())
    saved = load_config(tmp_path / "mine.yaml", check_files=False)
    assert saved.lora.lora_dropout == 0.1 and saved.lora.r == 16
    assert saved.parent == str((RUNS / "tiny-r16").resolve())
    assert yaml.safe_load((tmp_path / "mine.yaml").read_text())["output_dir"] is None


@pytest.mark.slow
def test_edit_launch_then_rerun_with_changes_records_the_chain(tmp_path: Path, capsys: Any) -> None:
    """Acceptance: the demo config, r 8 → 16 and a new learning rate, launched; then a rerun of it."""
    runs = tmp_path / "runs"
    app = LoratopApp(None, runs_root=runs, edit=DEMO_CONFIG)
    launched: list[Path] = []

    async def finish(pilot: Any) -> MonitorScreen:
        screen = app.screen
        assert isinstance(screen, MonitorScreen), f"launch did not open the monitor: {screen}"
        for _ in range(1500):
            if screen.state.finished is not None:
                return screen
            await pilot.pause(0.2)
        raise AssertionError("the launched run did not finish")

    async def drive() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await _editor(pilot, app)
            await _type(pilot, screen, "lora.r", "16")
            await _type(pilot, screen, "training.learning_rate", "1e-3")
            await _type(pilot, screen, "training.max_steps", "20")
            await pilot.press("ctrl+r")
            monitor = await finish(pilot)
            launched.append(monitor.run_dir)
            await pilot.press("e")  # rerun with changes
            rerun = await _editor(pilot, app)
            assert rerun.query_one("#knob-lora-r", Input).value == "16"
            await _type(pilot, rerun, "lora.r", "32")
            await _type(pilot, rerun, "lora.lora_alpha", "64")
            await pilot.press("ctrl+r")
            monitor = await finish(pilot)
            launched.append(monitor.run_dir)
            assert monitor.state.status == "completed"

    asyncio.run(drive())
    first, second = launched
    for run_dir in launched:
        wait_for_exit(json.loads((run_dir / "status.json").read_text())["pid"], 60)
    assert first.parent == runs and first.name.startswith("tiny-cpu-demo-")
    config = load_config(first / "config.yaml", check_files=False)
    assert (config.lora.r, config.training.learning_rate, config.training.max_steps) == (16, 1e-3, 20)
    assert config.parent == str(DEMO_CONFIG.resolve())
    rerun = load_config(second / "config.yaml", check_files=False)
    assert (rerun.lora.r, rerun.lora.lora_alpha, rerun.training.learning_rate) == (32, 64, 1e-3)
    assert rerun.parent == str(first)
    assert json.loads((second / "status.json").read_text())["parent"] == str(first)
    steps = of_type(read_events(second), ev.STEP)
    assert len(steps) == 20
    assert of_type(read_events(second), ev.RUN_STARTED)[0]["config"]["lora"]["r"] == 32

    # The history shows the chain, and the two finished runs compare with their diff named.
    from loratop.tui.cli import main
    from loratop.tui.runs import list_runs, parent_label

    by_name = {run.name: run for run in list_runs(runs)}
    assert parent_label(second, by_name[second.name].parent) == first.name
    shutil.rmtree(first / "adapter", ignore_errors=True)  # not needed to compare
    capsys.readouterr()
    assert main(["compare", str(first), str(second), "--no-tui"]) == 0
    report = capsys.readouterr().out
    assert "lora.r" in report and "lora.lora_alpha" in report and "training.learning_rate" not in report
    assert first.name in report and second.name in report


def test_loratop_edit_refuses_what_it_cannot_edit(tmp_path: Path, capsys: Any) -> None:
    from loratop.tui.cli import main

    assert main(["edit", "no-such-thing", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no-such-thing: config file not found" in err and "tiny-cpu-demo" in err and "a run under" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("lora: [r: 8\n")
    assert main(["edit", str(broken), "--runs-dir", str(tmp_path)]) == 2
    assert "malformed YAML" in capsys.readouterr().err


def test_editing_a_run_that_still_trains_says_a_launch_runs_alongside_it(tmp_path: Path) -> None:

    from loratop.tui.screens.knob_editor_screen import editor_for_run

    runs = tmp_path / "runs"
    shutil.copytree(RUNS, runs)
    assert not editor_for_run(runs / "tiny-r8", runs).parent_still_training  # finished
    status = json.loads((runs / "tiny-r8" / "status.json").read_text())
    for key in ("status", "exit_code", "ended_at"):
        status.pop(key)
    status.update(live_status())  # a live process stands in for the trainer
    (runs / "tiny-r8" / "status.json").write_text(json.dumps(status))
    app = LoratopApp(None, runs_root=runs, edit=runs / "tiny-r8")

    async def drive() -> str:
        async with app.run_test(size=(100, 40)) as pilot:
            screen = await _editor(pilot, app)
            assert screen.parent_still_training
            return str(screen.query_one("#effective", Static).render())

    assert "run tiny-r8 is still training: a launch runs alongside it" in asyncio.run(drive())
