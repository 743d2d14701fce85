"""The knob editor: its pure model (tui.models.knob_form) and the screen driven with the Pilot.

The slow test is the acceptance loop: edit the demo config, launch the real trainer, rerun
the finished run with changes, and check what each run folder records.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import difflib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_nvml import GIB, FakeGpu, FakePynvml, install
from textual.widgets import Button, Checkbox, Input, OptionList, Select, Static

from loratop.core import events as ev
from loratop.core.yaml_files import YamlTooBig
from loratop.preflight import samples
from loratop.preflight.config import load_config, read_yaml, validate_tree
from loratop.preflight.config_rewrite import rewrite_config
from loratop.tui.app import LoratopApp
from loratop.tui.models import knob_form as form
from loratop.tui.screens.knob_editor_screen import KnobEditor
from loratop.tui.screens.monitor_screen import MonitorScreen
from loratop.tui.screens.sample_picker_screen import SamplePicker
from tests.conftest import DEMO_CONFIG, live_status, of_type, read_events, screen_text, until, wait_for_exit
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
    # The default rate is the tree's model's: tiny's 2e-3, a pretrained model's 2e-4.
    assert form.get_path({}, "training.learning_rate") == 2e-3
    assert form.get_path({"model": {"name_or_path": "org/model"}}, "training.learning_rate") == 2e-4


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
    loaded = lambda: isinstance(app.screen, KnobEditor) and app.screen.dataset_rows is not None  # noqa: E731
    await until(pilot, loaded, 30, "the editor with its facts loaded")
    assert isinstance(app.screen, KnobEditor)
    return app.screen


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
            shown = lambda: "trainable" in str(screen.query_one("#effective", Static).render())  # noqa: E731
            await until(pilot, shown, 20, "the trainable count")
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
    from loratop.cli.main import main
    from loratop.core.runs import list_runs, parent_label

    by_name = {run.name: run for run in list_runs(runs)}
    assert parent_label(second, by_name[second.name].parent) == first.name
    shutil.rmtree(first / "adapter", ignore_errors=True)  # not needed to compare
    capsys.readouterr()
    assert main(["compare", str(first), str(second), "--no-tui"]) == 0
    report = capsys.readouterr().out
    assert "lora.r" in report and "lora.lora_alpha" in report and "training.learning_rate" not in report
    assert first.name in report and second.name in report


def test_loratop_edit_refuses_what_it_cannot_edit(tmp_path: Path, capsys: Any) -> None:
    from loratop.cli.main import main

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


# -- saving keeps the origin's layout ---------------------------------------------------------


def _changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """The lines ``after`` drops from ``before``, and the lines it adds."""
    diff = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    return [d[2:] for d in diff if d.startswith("- ")], [d[2:] for d in diff if d.startswith("+ ")]


def test_saving_a_sample_changes_only_the_edited_line_and_keeps_its_comments_and_flow_lists(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    origin = tmp_path / "demo.yaml"
    shutil.copy(DEMO_CONFIG, origin)
    configs = []

    async def edit(source: Path, path: str, text: str, save_as: str) -> None:
        app = LoratopApp(None, runs_root=tmp_path / "runs", edit=source)
        async with app.run_test(size=(100, 40)) as pilot:
            screen = await _editor(pilot, app)
            await _type(pilot, screen, path, text)
            screen.query_one("#save-path", Input).value = save_as
            assert screen.action_save() == Path(save_as)
            configs.append(screen.config)

    asyncio.run(edit(origin, "lora.r", "16", "mine.yaml"))
    before, saved = origin.read_text(), (tmp_path / "mine.yaml").read_text()
    header, _, body = saved.partition("\n")
    assert header == "# saved by loratop's knob editor from config demo.yaml"
    removed, added = _changed_lines(before, body)
    parent_note = "# set by loratop's knob editor: the run or config this one was tweaked from"
    # The one edited knob, and the parent the editor records (as it always has): nothing else.
    assert removed == ["  r: 8", f"parent: null                   {parent_note}"]
    assert added[0] == "  r: 16"
    assert added[1].startswith(f"parent: {origin.resolve()} ") and added[1].endswith(parent_note)
    assert len(added) == 2
    assert "  learning_rate: 2.0e-3        # a tiny random-init base" in body  # untouched spelling
    assert "  target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]" in body
    loaded = load_config(tmp_path / "mine.yaml", check_files=False)
    edited = configs[0]
    assert edited is not None and edited.lora.r == 16
    assert loaded.model_dump(exclude={"output_dir", "parent"}) == edited.model_dump(exclude={"output_dir", "parent"})
    assert loaded.parent == str(origin.resolve())

    # Saved again from the saved file: one first line (the newest), the float in the origin's style.
    asyncio.run(edit(tmp_path / "mine.yaml", "training.learning_rate", "1e-3", "again.yaml"))
    again = (tmp_path / "again.yaml").read_text()
    assert again.startswith("# saved by loratop's knob editor from config mine.yaml\n")
    assert again.count(form.SAVED_BY) == 1
    removed, added = _changed_lines(body, again.partition("\n")[2])
    assert removed[0] == "  learning_rate: 2.0e-3        # a tiny random-init base needs more than the usual 2e-4"
    assert added[0] == "  learning_rate: 1.0e-3        # a tiny random-init base needs more than the usual 2e-4"
    assert [line.split()[0] for line in added[1:]] == ["parent:"]
    assert load_config(tmp_path / "again.yaml", check_files=False).training.learning_rate == 1e-3


@pytest.mark.parametrize(
    ("text", "changes", "expected"),
    [
        # a float in the origin's style: exponent (with the dot and sign PyYAML needs) or decimal
        ("training:\n  learning_rate: 2.0e-3  # lr\n", {"training.learning_rate": 1e-4}, "1.0e-4  # lr"),
        ("training:\n  learning_rate: 0.0002\n", {"training.learning_rate": 1e-4}, "0.0001"),
        ("training:\n  learning_rate: 2E-4\n", {"training.learning_rate": 3e-5}, "3.0E-5"),
        # an int stays an int, a float a float; a bool keeps its family
        ("lora:\n  lora_alpha: 16\n", {"lora.lora_alpha": 32.0}, "lora_alpha: 32\n"),
        ("training:\n  num_train_epochs: 1.0\n", {"training.num_train_epochs": 2.0}, "num_train_epochs: 2.0\n"),
        ("training:\n  packing: True\n", {"training.packing": False}, "packing: False\n"),
        ("training:\n  packing: yes\n", {"training.packing": False}, "packing: no\n"),
        # a flow list stays a flow list, its comment on its line
        (
            "lora:\n  target_modules: [q_proj, v_proj]  # attention only\n",
            {"lora.target_modules": ["q_proj", "k_proj", "v_proj"]},
            "target_modules: [q_proj, k_proj, v_proj] # attention only\n",
        ),
    ],
)
def test_a_changed_value_is_spelled_as_the_origin_spells_its_kind(
    text: str, changes: dict[str, Any], expected: str
) -> None:
    out = rewrite_config(text, changes)
    assert expected in out
    assert yaml.safe_load(out) == form.with_values(yaml.safe_load(text), changes)  # PyYAML reads the number


def test_unchanged_values_keep_their_spelling_and_new_keys_go_where_the_schema_puts_them() -> None:
    text = "# head\nmodel:\n  name_or_path: tiny\n\n# the adapters\nlora:\n  r: 8\ntraining:\n  learning_rate: 2e-4\n"
    text += "  seed: ~\n  packing: yes\n"
    out = rewrite_config(
        text,
        {
            "training.learning_rate": 2e-4,  # the value it has (PyYAML reads `2e-4` as a string)
            "lora.r": 8,
            "training.max_steps": 5,
            "quantization.bnb_4bit_quant_type": "fp4",
            "output_dir": None,  # absent is null already
        },
    )
    assert out == (
        "# head\nmodel:\n  name_or_path: tiny\nquantization:\n  bnb_4bit_quant_type: fp4\n\n# the adapters\n"
        "lora:\n  r: 8\ntraining:\n  learning_rate: 2e-4\n  max_steps: 5\n  seed: ~\n  packing: yes\n"
    )
    assert rewrite_config(text, {"lora.r": 8}) == text


def _another(knob: form.Knob, old: Any) -> Any:
    if knob.kind == "bool":
        return not old
    if knob.kind == "choice":
        return next(choice for choice in knob.choices if choice != old)
    if knob.path in ("lora.lora_dropout", "training.warmup_steps"):
        return 0.2 if old != 0.2 else 0.1
    if knob.kind == "int":
        return old + 1 if old >= 0 else 10
    return old * 2 if old else 0.5


@pytest.mark.parametrize("name", samples.sample_names())
def test_each_knob_of_each_sample_saves_as_one_changed_line(name: str) -> None:
    folder = samples.samples_dir()
    assert folder is not None
    text, tree = (folder / f"{name}.yaml").read_text(), read_yaml(folder / f"{name}.yaml")
    edits = {path: _another(knob, form.get_path(tree, path)) for path, knob in form.KNOBS.items()}
    edits[form.TARGETS] = ["q_proj", "v_proj"]
    for path, value in edits.items():
        config, problems = validate_tree(form.with_values(tree, {path: value}))
        assert config is not None, problems
        config.parent = str(folder / f"{name}.yaml")
        saved, lost = form.saved_yaml(config, f"sample {name}", text, form.changed_values(tree, {path: value}))
        assert lost is None
        removed, added = _changed_lines(text, saved.partition("\n")[2])
        knob_lines = [line for line in removed + added if not line.startswith("parent:")]
        key = path.rsplit(".", 1)[1]
        assert len(added) - len(removed) in (0, 1) and len(knob_lines) in (1, 2), (path, removed, added)
        assert all(line.strip().startswith(f"{key}:") for line in knob_lines), (path, knob_lines)


def test_saving_reads_the_origin_within_bounds_and_writes_it_whole_when_its_layout_cannot_be_kept() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(6)
    )
    with pytest.raises(YamlTooBig):
        rewrite_config(bomb, {"lora.r": 4})
    config, _ = validate_tree({"lora": {"r": 4}})
    assert config is not None
    # Duplicate keys: PyYAML keeps the last, ruamel.yaml refuses; the save is the config whole, and says why.
    text, why = form.saved_yaml(config, "config dup.yaml", "lora:\n  r: 8\n  r: 9\n", {"lora.r": 4})
    assert why is not None and "cannot keep its layout" in why
    assert text.startswith("# saved by loratop's knob editor from config dup.yaml\nmodel:\n")
    assert yaml.safe_load(text)["lora"]["r"] == 4


def test_changed_values_are_the_knobs_the_form_changed() -> None:
    tree = {"lora": {"r": 8, "lora_alpha": 16, "target_modules": ["all-linear"]}}
    values = {"lora.r": 8, "lora.lora_alpha": 16.0, form.TARGETS: list(form.ALL_PROJECTIONS), "lora.lora_dropout": 0.1}
    assert form.changed_values(tree, values) == {"lora.lora_dropout": 0.1}
    assert form.changed_values(tree, {form.TARGETS: ["q_proj"]}) == {form.TARGETS: ["q_proj"]}


# -- the dropdowns show each choice whole -----------------------------------------------------


def _whole(choice: str, text: str) -> bool:
    """``choice`` in ``text`` as a word of its own (``adamw_8bit`` is not in ``paged_adamw_8bit``)."""
    return re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", text) is not None


def _region_text(app: LoratopApp, region: Any) -> str:
    lines = screen_text(app).splitlines()[region.y : region.y + region.height]
    return "\n".join(line[region.x : region.x + region.width] for line in lines)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_every_choice_reads_whole_in_its_dropdown_and_in_the_opened_list(size: tuple[int, int], tmp_path: Path) -> None:
    app = LoratopApp(None, runs_root=tmp_path / "runs", edit=DEMO_CONFIG)
    choices = {path: knob for path, knob in form.KNOBS.items() if knob.kind == "choice"}

    async def drive() -> None:
        async with app.run_test(size=size) as pilot:
            screen = await _editor(pilot, app)
            for path, knob in choices.items():
                select = screen.query_one(f"#knob-{path.replace('.', '-')}", Select)
                select.scroll_visible(animate=False)
                for choice in knob.choices:
                    select.value = choice
                    await pilot.pause()
                    row = _region_text(app, select.region)
                    assert _whole(choice, row), f"{path} = {choice}: the field shows {row!r}"
                select.value = knob.choices[0]
                select.focus()
                await pilot.press("enter")  # open the list, its first option highlighted
                await pilot.pause()
                seen: set[str] = set()
                for _ in knob.choices:
                    shown = _region_text(app, select.query_one("SelectOverlay").region)
                    seen |= {choice for choice in knob.choices if _whole(choice, shown)}
                    await pilot.press("down")
                    await pilot.pause()
                assert seen == set(knob.choices), (
                    f"{path}: not shown whole in the open list: {set(knob.choices) - seen}"
                )
                await pilot.press("escape")
                await pilot.pause()

    asyncio.run(drive())


# -- the sample picker says which samples run on a CPU ---------------------------------------


def _sample_config(name: str, **changes: Any) -> Any:
    folder = samples.samples_dir()
    assert folder is not None
    config, problems = validate_tree(form.with_values(read_yaml(folder / f"{name}.yaml"), changes))
    assert config is not None, problems
    return config


def test_what_a_sample_needs_is_read_from_its_model_and_settings() -> None:
    needs = samples.sample_needs()
    assert set(needs) == set(samples.sample_names())
    assert needs["tiny-cpu-demo"] == samples.HardwareNeed(True, True, "runs on CPU · the embedded tiny model")
    assert needs["tiny-lr-too-high"].cpu
    llama = needs["llama-3.1-8b-qlora"]
    assert not llama.cpu and not llama.here
    assert re.fullmatch(r"needs an NVIDIA GPU · ~\d+\.\d GB peak, 8\.0B params", llama.text), llama.text
    fsdp_text = needs["llama-3.1-70b-qlora-fsdp"].text
    assert re.fullmatch(r"needs 2 NVIDIA GPUs · ~\d+\.\d GB peak each \(fsdp\), 70\.6B params", fsdp_text)
    # From the config, not the name: the demo with a GPU-only setting needs a GPU.
    sharded = {"distributed.strategy": "fsdp", "distributed.nproc_per_node": 2}
    fsdp = samples.hardware_need(_sample_config("tiny-cpu-demo", **sharded))
    assert fsdp == samples.HardwareNeed(False, False, "needs 2 NVIDIA GPUs · for distributed.strategy")
    kernel = samples.hardware_need(_sample_config("tiny-cpu-demo", **{"training.sdpa_backend": "efficient"}))
    assert kernel.text == "needs an NVIDIA GPU · for training.sdpa_backend"
    # On a box with a GPU: whether the estimate's peak fits it.
    config = _sample_config("llama-3.1-8b-qlora")
    assert samples.hardware_need(config, 80 * 10**9, "NVIDIA H100").here
    small = samples.hardware_need(config, 8 * 10**9, "NVIDIA RTX 4060")
    assert not small.here and small.text.endswith(" · over this GPU's 8.0 GB")


@pytest.mark.parametrize("gpus", [[], [FakeGpu("GPU-1111aaaa-0000-1111-2222-333333333331", "NVIDIA L4", 24 * GIB)]])
def test_the_sample_picker_marks_the_samples_that_run_on_this_box(gpus: list[FakeGpu], monkeypatch: Any) -> None:
    install(monkeypatch, FakePynvml(gpus), None)
    app = LoratopApp(None)

    async def drive() -> tuple[str, SamplePicker, dict[str, Any]]:
        async with app.run_test(size=(80, 24) if not gpus else (120, 40)) as pilot:
            picker = SamplePicker()
            await app.push_screen(picker)
            await until(pilot, lambda: picker.needs is not None, 30, "the samples' needs")
            await pilot.pause()
            options = picker.query_one("#samples", OptionList)
            prompts = {name: options.get_option(str(folder / f"{name}.yaml")).prompt for name in names}
            return screen_text(app), picker, prompts

    folder, names = samples.samples_dir(), samples.sample_names()
    assert folder is not None
    text, picker, prompts = asyncio.run(drive())
    assert picker.needs is not None
    assert ("this box: NVIDIA L4 (25.8 GB)" if gpus else "this box: no NVIDIA GPU, CPU only") in text
    lines = text.splitlines()
    for name, need in picker.needs.items():
        at = next(i for i, line in enumerate(lines) if re.search(rf"▊ {re.escape(name)} +▎", line))
        assert need.text in lines[at + 1], f"{name}: {lines[at + 1]!r}"
        assert any("success" in str(span.style) for span in prompts[name].spans) == need.here  # green: runs here
    assert picker.needs["tiny-cpu-demo"].here
    assert picker.needs["llama-3.1-8b-qlora"].here == bool(gpus)  # fits the 24 GiB L4
