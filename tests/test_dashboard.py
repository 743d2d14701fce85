"""The dashboard driven with Textual's Pilot: fed by the real trainer or a recorded run."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from textual.message import Message
from textual.notifications import Notification, Notify
from textual.widgets import Static

from loratop.core import events as ev
from loratop.core.run_index import load_index
from loratop.core.run_summary import fold_run
from loratop.preflight.config import load_config, parse_overrides
from loratop.preflight.launcher import launch
from loratop.tui.app import LoratopApp
from loratop.tui.screens.monitor_screen import DETACHED, QUIT, MonitorScreen
from loratop.tui.screens.quit_screen import QuitScreen
from tests.conftest import (
    DEMO_CONFIG,
    add_evals,
    assert_same_fold,
    home_read,
    live_status,
    of_type,
    read_events,
    replay_drawn,
    slow_fold,
    state_drawn,
    until,
)

RECORDED = Path(__file__).parent / "data" / "recorded_run" / "events.jsonl"


def _text(app: LoratopApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def _recorded_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "recorded_run"
    run_dir.mkdir()
    shutil.copy(RECORDED, run_dir / "events.jsonl")
    return run_dir


@pytest.mark.slow
def test_pilot_runs_the_demo_and_the_screen_matches_events_jsonl(tmp_path: Path) -> None:
    """``loratop run sample_configs/tiny-cpu-demo.yaml`` in-process, with the real trainer subprocess."""
    # 120 of the demo's 300 steps: the same run, shorter (a busy 2-core box once took > 300 s for all).
    overrides = [f"output_dir={tmp_path / 'run'}", "training.max_steps=120"]
    config = load_config(DEMO_CONFIG, parse_overrides(overrides))
    run = launch(config, DEMO_CONFIG)
    app = LoratopApp(run.run_dir, run.events_fd, process=run.process)

    async def drive() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            await until(pilot, lambda: screen.state.finished is not None, 900, "the run to finish")
            # The dashboard reaps the trainer it launched as soon as it exits: no zombie while it stays open.
            await until(pilot, lambda: not Path(f"/proc/{run.process.pid}").exists(), 30, "the trainer to be reaped")
            assert run.process.returncode == 0
            summary = run.run_dir / ".loratop-index" / "summary.json"
            await until(pilot, summary.is_file, 10, "the trainer to leave its summary for ls")
            await state_drawn(pilot, screen)
            events = read_events(run.run_dir)
            steps = of_type(events, ev.STEP)
            started = of_type(events, ev.RUN_STARTED)[0]
            header = _text(app, "#run-header")
            assert f"step {steps[-1]['step']}/{started['max_steps']}" in header
            assert f"loss {steps[-1]['loss']:.4f}" in header
            assert "COMPLETED" in header
            assert f"{100 * started['params']['fraction']:.3f}%" in _text(app, "#params")
            assert "completed" in _text(app, "#outcome")
            assert list(screen.state.steps) == [s["step"] for s in steps]
            await pilot.press("q")  # finished: quits without asking
        assert app.return_value == QUIT

    asyncio.run(drive())
    assert run.process.wait(timeout=30) == 0
    # The real trainer's compact index folds to what every event gives (attach and ls read it).
    assert load_index(run.run_dir) is not None
    assert_same_fold(fold_run(run.run_dir)[0], slow_fold(run.run_dir))


@pytest.mark.slow
def test_keys_checkpoint_quit_dialog_and_stop_on_a_live_run(tmp_path: Path) -> None:
    config = load_config(DEMO_CONFIG, parse_overrides([f"output_dir={tmp_path / 'run'}", "training.max_steps=3000"]))
    run = launch(config, DEMO_CONFIG)
    app = LoratopApp(run.run_dir, run.events_fd)

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            await until(pilot, lambda: screen.state.last_step >= 3, 120, "the first steps")
            await pilot.press("c")
            await until(pilot, lambda: bool(screen.state.checkpoints), 60, "the checkpoint")
            await pilot.press("q")
            assert isinstance(app.screen, QuitScreen), "quitting a live run must ask"
            await pilot.press("escape")
            assert app.screen is screen
            await pilot.press("s")
            await pilot.press("y")
            await until(pilot, lambda: screen.state.finished is not None, 120, "the stop")
            await state_drawn(pilot, screen)
            assert screen.state.finished["status"] == ev.STOPPED
            assert "stopped" in _text(app, "#outcome")
            await pilot.press("q")

    asyncio.run(drive())
    assert run.process.wait(timeout=30) == 0
    checkpoint = of_type(read_events(run.run_dir), ev.CHECKPOINT)[0]
    assert not checkpoint["final"] and (Path(checkpoint["path"]) / "adapter_model.safetensors").is_file()


def test_garbage_and_a_seq_gap_on_the_pipe(tmp_path: Path) -> None:
    """A recorded run fed through a pipe with garbage lines and a missing range of seq."""
    run_dir = _recorded_run(tmp_path)
    lines = RECORDED.read_bytes().splitlines(keepends=True)
    fed = lines[:30] + [b"this is not json\n", b'{"v":1,"seq":"x"}\n'] + lines[45:]
    read_fd, write_fd = os.pipe()
    app = LoratopApp(run_dir, read_fd)

    async def drive() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            for chunk in fed:
                os.write(write_fd, chunk)
            os.close(write_fd)
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            await until(pilot, lambda: screen.state.finished is not None, 20, "the recorded run's end")
            await state_drawn(pilot, screen)
            recorded = [e for e in map(ev.decode_line, lines) if e]
            assert list(screen.state.steps) == [e["step"] for e in recorded if e["type"] == ev.STEP]
            assert screen.state.garbage == 2
            assert screen.state.filled_from_file == 15
            status = _text(app, "#status-line")
            assert "2 garbled line(s) skipped" in status and "15 filled from events.jsonl" in status

    asyncio.run(drive())


def test_attach_replays_a_file_with_garbage(tmp_path: Path) -> None:
    run_dir = _recorded_run(tmp_path)
    with (run_dir / "events.jsonl").open("r+b") as fh:
        content = fh.read()
        fh.seek(0)
        fh.write(b"garbage\n" + content)
    app = LoratopApp(run_dir)

    async def drive() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            await replay_drawn(pilot, screen)
            assert screen.state.last_step == 60 and screen.state.garbage == 1
            assert "step 60/60" in _text(app, "#run-header")

    asyncio.run(drive())


def test_attach_to_a_finished_run_without_caches_leaves_them_for_ls(tmp_path: Path) -> None:
    """A dashboard that sees a run end owns that end: it writes the run's index and summary
    (listing never does), so the next ``ls`` reads one small file for it."""
    from loratop.core.run_summary import cached_facts

    run_dir = _recorded_run(tmp_path)
    app = LoratopApp(run_dir)

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: cached_facts(run_dir) is not None, 20, "the run's caches")

    asyncio.run(drive())
    facts = cached_facts(run_dir)
    assert facts is not None and facts["status"] == "completed" and load_index(run_dir) is not None


@pytest.mark.parametrize("evals", [False, True], ids=["", "with-eval"])
@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_monitor_layout_fits(tmp_path: Path, size: tuple[int, int], evals: bool) -> None:
    """Every panel visible, inside the screen, none overlapping; screenshot saved for a look.
    With evaluations the header takes a third line, and the chart still gets its rows."""
    run_dir = _recorded_run(tmp_path)
    if evals:
        add_evals(run_dir, [(30, 5.8), (60, 5.9)])
    app = LoratopApp(run_dir)

    async def drive() -> None:
        async with app.run_test(size=size) as pilot:
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            await replay_drawn(pilot, screen)
            assert screen.has_class("narrow") == (size[0] < 100)
            panels = [
                "#run-header", "#loss-chart", "#lr-panel", "#params", "#memory-panel", "#events-panel", "#status-line"
            ]  # fmt: skip
            regions = {sel: screen.query_one(sel).region for sel in panels}
            for sel, region in regions.items():
                assert region.width > 0 and region.height > 0, f"{sel} is not visible at {size}"
                assert region.right <= size[0] and region.bottom <= size[1], f"{sel} spills off the screen"
            for a in panels:
                for b in panels:
                    if a < b:
                        assert not regions[a].overlaps(regions[b]), f"{a} overlaps {b} at {size}"
            assert regions["#loss-chart"].height >= 8, "the chart must stay readable"
            text = "\n".join(str(screen.query_one(sel).render()) for sel in ["#params", "#events-panel"])
            assert "spills n/a (CPU run)" in text and "base frozen" in text
            memory = "\n".join(line.plain for line in _memory_lines(screen))
            assert "no NVIDIA GPU" in memory
            if evals:
                header = str(screen.query_one("#run-header").render())
                assert regions["#run-header"].height == 3 and header.endswith("eval 5.9000 (best 5.8000 @30)")
            svg = app.export_screenshot()
            out = Path(os.environ.get("LORATOP_SCREENSHOTS", tmp_path))
            out.mkdir(parents=True, exist_ok=True)
            (out / f"monitor-{size[0]}x{size[1]}.svg").write_text(svg)

    asyncio.run(drive())


def _memory_lines(screen: MonitorScreen) -> list[Any]:
    from loratop.widgets.memory_panel import memory_lines

    return memory_lines(screen.state.memory, 40)


def test_detach_while_live_and_the_help_screen(tmp_path: Path) -> None:
    """``d`` on a live run returns DETACHED (the CLI then prints how to attach)."""
    run_dir = _recorded_run(tmp_path)
    lines = RECORDED.read_bytes().splitlines(keepends=True)
    (run_dir / "events.jsonl").write_bytes(b"".join(lines[:40]))  # still "running"
    (run_dir / "status.json").write_text(json.dumps(live_status(state="running")))
    app = LoratopApp(run_dir)

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            await until(pilot, lambda: screen.state.last_step > 0, 20, "the replay")
            assert screen.state.is_live
            await pilot.press("question_mark")
            assert "loratop keys" in str(app.screen.query_one(Static).render())
            await pilot.press("escape")
            await pilot.press("d")
        assert app.return_value == DETACHED

    asyncio.run(drive())


def test_a_notice_is_shown_on_opening(tmp_path: Path) -> None:
    """The pre-flight estimate reaches the dashboard as a toast."""
    run_dir = _recorded_run(tmp_path)
    app = LoratopApp(run_dir, notice="pre-flight estimate (QLoRA): 5.4 GB peak")

    toasts: list[Notification] = []

    def hook(message: Message) -> None:
        if isinstance(message, Notify):
            toasts.append(message.notification)

    async def drive() -> None:
        async with app.run_test(size=(100, 30), notifications=True, message_hook=hook) as pilot:
            await until(pilot, lambda: bool(toasts), 10, "the notice's toast")
            await pilot.pause(0.2)  # no second toast
            assert [n.message for n in toasts] == ["pre-flight estimate (QLoRA): 5.4 GB peak"]

    asyncio.run(drive())


def test_home_screen_lists_runs_and_opens_one(tmp_path: Path) -> None:
    _recorded_run(tmp_path)
    app = LoratopApp(runs_root=tmp_path)

    async def drive() -> None:
        async with app.run_test(size=(120, 30)) as pilot:
            from textual.widgets import DataTable

            await home_read(pilot)
            table = app.screen.query_one(DataTable)
            assert table.row_count == 1
            row = {str(key.value): str(cell) for key, cell in zip(table.columns, table.get_row_at(0), strict=True)}
            assert row["run"] == "recorded_run" and row["status"] == "completed" and row["step"] == "60/60"
            assert row["knobs"].startswith("r") and " lr" in row["knobs"]  # key knobs, from run_started's config
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, MonitorScreen), 10, "the run's monitor")

    asyncio.run(drive())


# -- issue 26: the screens after a launch, sparklines on attach, the log pane -------------------


def _live_run(runs: Path, name: str = "tiny-r8", events: int = 40) -> Path:
    """A recorded run of the tiny model as it was while training: its first ``events`` events,
    and a status.json that proves its trainer (this test process) alive."""
    from tests.conftest import copy_run

    run_dir = copy_run(runs, name, f"{name}-live")
    lines = (run_dir / "events.jsonl").read_bytes().splitlines(keepends=True)
    (run_dir / "events.jsonl").write_bytes(b"".join(lines[:events]))
    (run_dir / "status.json").write_text(json.dumps(live_status(state="running")))
    return run_dir


@pytest.mark.slow
def test_save_and_launch_from_a_runs_monitor_opens_the_new_run_over_the_history(tmp_path: Path) -> None:
    """Issue 26, item 7: ``loratop run`` → ``e`` → save+launch. The new run's monitor takes the
    editor's place over the run history (not over the previous run's monitor): ``q`` there asks
    stop or detach, ``esc`` goes to the history, which lists both runs."""
    from textual.widgets import DataTable, Input

    from loratop.tui.screens.home_screen import HomeScreen
    from loratop.tui.screens.knob_editor_screen import KnobEditor
    from tests.conftest import screen_text

    runs = tmp_path / "runs"
    first = _live_run(runs)
    app = LoratopApp(first, runs_root=runs)
    saved = tmp_path / "edited.yaml"
    launched_dirs: list[Path] = []

    async def drive() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            monitor = app.screen
            assert isinstance(monitor, MonitorScreen)
            await until(pilot, lambda: monitor.state.last_step > 0, 20, "the replay")
            await pilot.press("e")
            await until(pilot, lambda: isinstance(app.screen, KnobEditor), 10, "the editor")
            editor = app.screen
            editor.query_one("#save-path", Input).value = str(saved)
            await pilot.press("ctrl+b")  # save+launch: a real trainer starts
            await until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen is not monitor, 20, "it")
            launched = app.screen
            assert isinstance(launched, MonitorScreen) and launched.run_dir != first and saved.is_file()
            launched_dirs.append(launched.run_dir)
            assert [type(s) for s in app.screen_stack[1:]] == [HomeScreen, MonitorScreen], app.screen_stack
            await until(pilot, lambda: screen_text(app).splitlines()[-1].strip() != "", 5, "the footer drawn")
            footer = screen_text(app).splitlines()[-1]
            assert "esc back" in footer and "q quit" in footer, footer
            assert launched.state.is_live
            await pilot.press("q")
            await pilot.pause()
            assert isinstance(app.screen, QuitScreen), "q on the launched run asks stop or detach"
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is launched
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, MonitorScreen), 10, "the monitor left")
            home = app.screen
            assert isinstance(home, HomeScreen), "esc goes to the run history, not to the previous run's monitor"
            await home_read(pilot)
            table = home.query_one(DataTable)
            keys = {Path(str(key.value)).name: key for key in table.rows}
            assert {first.name, launched.run_dir.name} <= keys.keys()
            table.move_cursor(row=table.get_row_index(keys[launched.run_dir.name]))
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, MonitorScreen), 5, "the launched run's monitor again")
            await pilot.press("d")  # detach: the CLI's "come back with" names this run, not the first

    asyncio.run(drive())
    assert app.return_code == 0 and app.return_value == DETACHED and app.ended_on == launched_dirs[0]


def test_sparklines_show_the_history_at_once_after_attach(tmp_path: Path) -> None:
    """Issue 26, item 12: attached to a training run, the lr and memory sparklines draw the
    replayed history in the same redraw as the panels beside them, not 5 s later."""
    from textual.widgets import Sparkline

    run_dir = _live_run(tmp_path / "runs", events=60)
    app = LoratopApp(run_dir)

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            # The redraw that writes the lr text is the one that would draw the sparklines.
            await until(pilot, lambda: _text(app, "#lr-text") != "lr –", 20, "the replay drawn")
            assert screen.state.is_live and len(screen.state.steps) > 5
            lr = screen.query_one("#lr-spark", Sparkline).data
            memory = screen.query_one("#mem-spark", Sparkline).data
            assert lr and list(lr)[-1] == screen.state.lr[-1], "the lr sparkline is flat after attach"
            assert memory and list(memory) == list(screen.state.mem_series[-240:])

    asyncio.run(drive())
