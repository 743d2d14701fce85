"""Run history (home screen), the compare screen and exports, driven with the Pilot.

Fed by three short real runs of the tiny model recorded in tests/data/runs (copied, never
written to): tiny-r8, tiny-r16 (its child: r 8 → 16, α 16 → 32, lr 2e-3 → 1e-3) and
tiny-lr-high (lr 3e-2, two spikes).
"""

from __future__ import annotations

import asyncio
import csv
import re
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Static

from loratop.core import events as ev
from loratop.tui.app import LoratopApp
from loratop.tui.screens.compare_screen import CompareScreen
from loratop.tui.screens.monitor_screen import MonitorScreen
from loratop.widgets import CompareChart
from tests.conftest import home_read, of_type, read_events, replay_drawn, until


def _column(table: DataTable[Any], title: str) -> list[str]:
    return [str(table.get_cell(row, title)) for row in table.rows]


def _names(table: DataTable[Any]) -> list[str]:
    return [name.removeprefix("● ") for name in _column(table, "run")]


def test_history_lists_runs_with_knobs_outcomes_and_parent(runs: Path) -> None:
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(160, 24)) as pilot:  # wide enough for every column
            await home_read(pilot)
            table = app.screen.query_one(DataTable)
            names = _names(table)
            assert sorted(names) == ["tiny-lr-high", "tiny-r16", "tiny-r8"]
            row = dict(zip(names, range(len(names)), strict=True))
            knobs = _column(table, "knobs")
            assert "r16" in knobs[row["tiny-r16"]] and "lr1e-3" in knobs[row["tiny-r16"]]
            assert _column(table, "parent")[row["tiny-r16"]] == "tiny-r8"
            assert _column(table, "peak VRAM")[row["tiny-r8"]] == "n/a (CPU)"
            assert _column(table, "spikes")[row["tiny-lr-high"]] == "2"
            last_loss = of_type(read_events(runs / "tiny-r8"), ev.STEP)[-1]["loss"]
            assert _column(table, "final loss")[row["tiny-r8"]] == f"{last_loss:.4f}"

            app.screen.sort_key = "loss"
            app.screen.action_reload()
            await pilot.pause()
            losses = [float(v) for v in _column(table, "final loss")]
            assert losses == sorted(losses)
            await pilot.press("o")  # cycles to the next sort
            assert app.screen.sort_key != "loss"

    asyncio.run(drive())


def test_marking_two_runs_and_c_opens_the_compare_screen(runs: Path) -> None:
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await home_read(pilot)
            home = app.screen
            home.sort_key = "name"
            home.action_reload()
            await pilot.pause()
            table = home.query_one(DataTable)
            assert _names(table) == ["tiny-lr-high", "tiny-r16", "tiny-r8"]
            table.move_cursor(row=2)
            await pilot.press("space")
            table.move_cursor(row=0)
            await pilot.press("space")
            assert [p.name for p in home.marked] == ["tiny-r8", "tiny-lr-high"]
            await pilot.press("c")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, CompareScreen)
            assert [run.name for run in screen.runs] == ["tiny-r8", "tiny-lr-high"]
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is home

            # One marked run compares with the run under the cursor.
            home.marked[:] = [home.marked[1]]  # tiny-lr-high
            table.move_cursor(row=1)  # tiny-r16
            await pilot.press("c")
            await pilot.pause()
            assert [run.name for run in app.screen.runs] == ["tiny-lr-high", "tiny-r16"]
            await pilot.press("escape")
            await pilot.pause()

            # With nothing marked, c compares the run under the cursor with its parent.
            home.marked.clear()
            table.move_cursor(row=1)  # tiny-r16, whose parent is tiny-r8
            await pilot.press("c")
            await pilot.pause()
            assert [run.name for run in app.screen.runs] == ["tiny-r8", "tiny-r16"]

    asyncio.run(drive())


def test_compare_screen_overlays_both_curves_and_names_the_changed_knobs(runs: Path) -> None:
    app = LoratopApp(None, compare=[runs / "tiny-r8", runs / "tiny-r16", runs / "tiny-lr-high"])

    async def drive() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, CompareScreen)
            chart = screen.query_one(CompareChart)
            steps = [len(of_type(read_events(runs / n), ev.STEP)) for n in ("tiny-r8", "tiny-r16")]
            drawn = chart.plotted[::-1]  # the base (A) is drawn last, on top
            assert drawn[0] > 0 and drawn[1] > 0 and drawn[2] > 2
            assert drawn[0] <= 2 * steps[0]
            legend = str(screen.query_one("#compare-legend", Static).render())
            assert "tiny-r16: r 8 → 16, lora_alpha 16 → 32, learning_rate 2e-3 → 1e-3" in legend
            assert "2 spikes" in legend
            series = screen.series()
            assert len(series[2].spikes) == 2  # tiny-lr-high's spikes are marked

            table = screen.query_one(DataTable)
            knobs = _column(table, "what")
            assert {"lora.r", "lora.lora_alpha", "training.learning_rate"} <= set(knobs)
            assert "final loss" in knobs and "peak VRAM" in knobs
            r_row = knobs.index("lora.r")
            assert [str(table.get_cell_at((r_row, i))) for i in (1, 2, 3)] == ["8", "16", "8"]
            lr_row = knobs.index("training.learning_rate")
            assert [str(table.get_cell_at((lr_row, i))) for i in (1, 2, 3)] == ["2e-3", "1e-3", "3e-2"]

            x_steps = series[0].x[-1]
            await pilot.press("x")  # tokens seen
            tokens = of_type(read_events(runs / "tiny-r8"), ev.STEP)[-1]["tokens"]
            assert screen.series()[0].x[-1] == tokens != x_steps
            await pilot.press("m")  # raw per-step loss
            raw = of_type(read_events(runs / "tiny-r8"), ev.STEP)
            assert screen.series()[0].y == [e["loss"] for e in raw]

    asyncio.run(drive())


def test_x_in_the_monitor_exports_csv_jsonl_and_svg(runs: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """The export reads the run whole and writes three files: on a worker, never the UI thread
    (a million-step run would freeze the screen); the SVG is the screen as it was at the key."""
    import threading

    from loratop.tui.models import export

    monkeypatch.chdir(tmp_path)
    on_ui_thread: list[bool] = []
    real = export.export_files

    def watched(*args: Any, **kwargs: Any) -> Any:
        on_ui_thread.append(threading.current_thread() is threading.main_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(export, "export_files", watched)
    app = LoratopApp(runs / "tiny-lr-high")

    async def drive() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            assert isinstance(app.screen, MonitorScreen)
            await replay_drawn(pilot, app.screen)
            await pilot.press("x")
            svg = tmp_path / "loratop-exports" / "tiny-lr-high.svg"
            await until(pilot, svg.exists, 10, "the export's last file")

    asyncio.run(drive())
    assert on_ui_thread == [False], "the export read and wrote on the UI thread"
    out = tmp_path / "loratop-exports"
    steps = of_type(read_events(runs / "tiny-lr-high"), ev.STEP)
    with (out / "tiny-lr-high-metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(steps) and rows[-1]["step"] == str(steps[-1]["step"])
    assert len((out / "tiny-lr-high-events.jsonl").read_text().splitlines()) == len(read_events(runs / "tiny-lr-high"))
    svg = (out / "tiny-lr-high.svg").read_text()
    assert svg.startswith("<svg") and "tiny-lr-high" in svg


def test_x_on_a_full_disk_says_the_export_failed(runs: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """The export's worker meets a full disk: a toast says so (never a silent worker death), the
    monitor stays."""
    import errno

    from loratop.tui.models import export

    monkeypatch.chdir(tmp_path)

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "export_files", full)
    app = LoratopApp(runs / "tiny-lr-high")
    said: list[str] = []

    async def drive() -> None:
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            real_notify = app.notify
            app.notify = lambda message, **kw: said.append(message) or real_notify(message, **kw)  # type: ignore[method-assign]
            await until(pilot, lambda: app.screen.state.finished is not None, 20, "the replay")
            await pilot.press("x")
            await until(pilot, lambda: bool(said), 10, "the export's notice")
            assert said == ["export failed: [Errno 28] No space left on device"]
            assert isinstance(app.screen, MonitorScreen)

    asyncio.run(drive())


def _live_run(runs: Path, max_steps: int) -> Any:
    """A run folder named ``live`` whose trainer (this test) has made one step: its sink."""
    import json

    from loratop.trainer.event_sink import EventSink
    from tests.conftest import live_status

    live = runs / "live"
    live.mkdir()
    sink = EventSink(live / "events.jsonl")
    sink.emit(ev.RUN_STARTED, run_name="live", max_steps=max_steps, device={"kind": "cpu"}, config={})
    sink.emit(ev.STEP, step=1, loss=2.0, tokens=10)
    (live / "status.json").write_text(json.dumps(live_status(state="running", started_at=2e9)))
    return sink


def test_the_history_follows_a_running_run_without_a_reload(runs: Path) -> None:
    from tests.conftest import until

    sink = _live_run(runs, max_steps=100)
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(100, 24)) as pilot:
            await home_read(pilot)
            table = app.screen.query_one(DataTable)

            def step_of_live() -> str:
                return _column(table, "step")[_names(table).index("live")] if "live" in _names(table) else ""

            assert step_of_live() == "1/100"
            for step in range(2, 8):
                sink.emit(ev.STEP, step=step, loss=2.0 - step / 10, tokens=10 * step)
            await until(pilot, lambda: step_of_live() == "7/100", 6, "the live row to move on")
            sink.emit(ev.RUN_FINISHED, status="completed", duration_s=1.0)
            await until(pilot, lambda: "completed" in _column(table, "status")[_names(table).index("live")], 6, "it")
            (runs / "tiny-r8" / "events.jsonl").unlink()  # a run removed from the folder goes from the list
            await until(pilot, lambda: "tiny-r8" not in _names(table), 6, "the removed run to go")

    asyncio.run(drive())
    sink.close()


def test_a_live_cell_that_grows_is_drawn_whole(runs: Path) -> None:
    """A running run's step goes from 1/1000 to 100/1000: its column widens, the cell is not cut."""
    from tests.conftest import screen_text, until

    sink = _live_run(runs, max_steps=1000)
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(120, 24)) as pilot:
            await home_read(pilot)
            assert "1/1000" in screen_text(app)
            for step in range(2, 101):
                sink.emit(ev.STEP, step=step, loss=2.0, tokens=10 * step)
            await until(pilot, lambda: "100/1000" in screen_text(app), 6, "the grown cell drawn whole")

    asyncio.run(drive())
    sink.close()


def test_every_sortable_column_names_a_real_column_and_sort() -> None:
    from loratop.core.runs import SORT_KEYS
    from loratop.tui.models.panels import HISTORY_COLUMNS
    from loratop.tui.screens.home_screen import HomeScreen

    assert set(HomeScreen.SORT_BY_COLUMN) <= set(HISTORY_COLUMNS)
    assert set(HomeScreen.SORT_BY_COLUMN.values()) <= set(SORT_KEYS)
    assert HomeScreen.SORT_BY_COLUMN["eval (best)"] == "eval"  # the held-out loss sorts too


def test_esc_in_a_monitor_opened_from_home_goes_back_to_a_fresh_list_and_q_quits(runs: Path) -> None:
    """Opened from the run history, a monitor's esc comes back to it, as its footer and help
    say; the list is brought up to date on return. q quits, there as everywhere (a finished run's
    monitor without asking; a live one's asks: issue 26, item 7)."""
    import json

    from loratop.tui.screens.help_screen import HelpScreen
    from loratop.tui.screens.monitor_screen import QUIT
    from loratop.tui.screens.quit_screen import QuitScreen
    from tests.conftest import copy_run, live_status, screen_text

    live = copy_run(runs, "tiny-r8", "tiny-live")  # a run still training: its events so far, its trainer alive
    lines = (live / "events.jsonl").read_bytes().splitlines(keepends=True)
    (live / "events.jsonl").write_bytes(b"".join(lines[:40]))
    (live / "status.json").write_text(json.dumps(live_status(state="running")))
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await home_read(pilot)
            home = app.screen
            table = home.query_one(DataTable)
            table.move_cursor(row=_names(table).index("tiny-r8"))
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, MonitorScreen), 10, "the run's monitor")
            await replay_drawn(pilot, app.screen)
            footer = screen_text(app).splitlines()[-1]
            assert "esc back" in footer and "q quit" in footer and "? help" in footer, footer
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            help_text = " ".join(screen_text(app).split())
            assert "esc back to the run history" in help_text and "q quit loratop (while the run trains" in help_text
            await pilot.press("escape")  # closes the help
            assert isinstance(app.screen, MonitorScreen)

            copy_run(runs, "tiny-r8", "tiny-new")  # a run appears while the monitor is open
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is home
            assert "tiny-new" in _names(table), "the list is refreshed on return, not 2 s later"

            table.move_cursor(row=_names(table).index("tiny-live"))
            await pilot.press("enter")
            monitor = app.screen
            assert isinstance(monitor, MonitorScreen)
            await until(pilot, lambda: monitor.state.last_step > 0, 20, "the live run's replay")
            assert monitor.state.is_live
            await pilot.press("q")
            await pilot.pause()
            assert isinstance(app.screen, QuitScreen), "q over a live run asks stop or detach, not back"
            await pilot.press("escape")  # cancel: the run's monitor again
            await pilot.pause()
            assert app.screen is monitor and app.return_code is None
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is home

            table.move_cursor(row=_names(table).index("tiny-r8"))
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, MonitorScreen), 10, "the run's monitor")
            await replay_drawn(pilot, app.screen)
            await pilot.press("q")  # a finished run: quits without asking
        assert app.return_code == 0 and app.return_value == QUIT

    asyncio.run(drive())


def test_c_on_a_run_started_from_a_sample_names_the_sample_and_what_changed(runs: Path) -> None:
    """Its parent is a config: no curve to compare, and the notice says so, with the knobs changed."""
    from textual.message import Message
    from textual.notifications import Notify

    from tests.conftest import DEMO_CONFIG, copy_run

    copy_run(runs, "tiny-r16", "tiny-cpu-demo-20261105-143012", parent=str(DEMO_CONFIG))
    app = LoratopApp(None, runs_root=runs)
    toasts: list[str] = []

    def hook(message: Message) -> None:
        if isinstance(message, Notify):
            toasts.append(message.notification.message)

    async def drive() -> None:
        async with app.run_test(size=(200, 24), notifications=True, message_hook=hook) as pilot:  # every column
            await home_read(pilot)
            home = app.screen
            home.sort_key = "name"
            home.action_reload()
            await pilot.pause()
            table = home.query_one(DataTable)
            table.move_cursor(row=_names(table).index("tiny-cpu-demo-20261105-143012"))
            await pilot.press("c")
            await pilot.pause()
            assert app.screen is home
            assert _column(table, "parent")[table.cursor_row] == "tiny-cpu-demo.yaml"

    asyncio.run(drive())
    said = toasts[-1]
    assert "no parent run" not in said
    assert "parent is the sample config tiny-cpu-demo.yaml" in said and "no loss curve" in said
    assert "r 8 → 16, lora_alpha 16 → 32, learning_rate 2e-3 → 1e-3" in said


def test_the_home_screen_shows_dashes_for_a_run_that_failed_while_loading(runs: Path) -> None:
    from tests.test_runs_cli import failed_while_loading

    failed = failed_while_loading(runs)
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(160, 24)) as pilot:
            await home_read(pilot)
            table = app.screen.query_one(DataTable)
            row = _names(table).index(failed.name)
            assert _column(table, "spikes")[row] == "–" and _column(table, "spills")[row] == "–"
            assert _column(table, "peak VRAM")[row] == "–" and _column(table, "final loss")[row] == "–"
            assert _column(table, "spills")[_names(table).index("tiny-r8")] == "n/a (CPU)"

    asyncio.run(drive())


def test_the_monitor_of_a_run_that_never_trained_says_so_not_that_it_waits(runs: Path) -> None:
    from tests.conftest import screen_text, until
    from tests.test_runs_cli import failed_while_loading

    failed = failed_while_loading(runs)
    app = LoratopApp(failed, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: "no step was trained" in screen_text(app), 6, "the ended chart")
            await until(pilot, lambda: "memory: none sampled (the run ended first)" in screen_text(app), 6, "memory")
            assert "waiting for the first" not in screen_text(app)

    asyncio.run(drive())


def _toast_words(app: LoratopApp) -> list[list[str]]:
    """The words each toast on screen shows, as drawn (a word broken across lines shows as two)."""
    from textual.widgets._toast import Toast

    strips = app.screen._compositor.render_strips()
    lines = ["".join(segment.text for segment in strip) for strip in strips]
    shown = []
    for toast in app.screen.query(Toast):
        region = toast.content_region
        text = [line[region.x : region.right] for line in lines[region.y : region.bottom]]
        shown.append(" ".join(text).split())
    return shown


def test_notifications_wrap_at_word_boundaries_at_80_columns(runs: Path, tmp_path: Path, monkeypatch: Any) -> None:
    import shutil

    monkeypatch.chdir(tmp_path)
    run = runs / "tiny-cpu-demo-20261129-075650"  # a name as `loratop demo` gives it
    shutil.copytree(runs / "tiny-r8", run)
    app = LoratopApp(run)
    sent: list[str] = []

    async def drive() -> None:
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await replay_drawn(pilot, app.screen)
            real_notify = app.notify
            app.notify = lambda message, **kw: sent.append(message) or real_notify(message, **kw)  # type: ignore[method-assign]
            await pilot.press("x")
            from tests.conftest import until

            await until(pilot, lambda: bool(_toast_words(app)), 5, "the notice")
            assert sent and "loratop-exports" in sent[0]
            assert _toast_words(app)[-1] == sent[0].split(), "every word of the notice whole on one line"

    asyncio.run(drive())
    assert (tmp_path / "loratop-exports" / f"{run.name}-metrics.csv").is_file()


def test_back_from_the_monitor_of_a_run_this_dashboard_launched_still_reaps_its_trainer(runs: Path) -> None:
    """The monitor goes, the trainer goes on; when it exits it is reaped (no zombie) all the same."""
    import os
    import subprocess

    from tests.conftest import until

    app = LoratopApp(None, runs_root=runs)
    trainer = subprocess.Popen(["sleep", "1"])  # stands in for the trainer this dashboard launched
    read_fd, write_fd = os.pipe()

    async def drive() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await home_read(pilot)
            home = app.screen
            app.push_screen(app.open_monitor(runs / "tiny-r8", read_fd, trainer))
            await pilot.pause(0.3)
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is home
            await until(pilot, lambda: trainer.returncode is not None, 10, "the trainer to be reaped")

    try:
        asyncio.run(drive())
    finally:
        os.close(write_fd)
    assert trainer.returncode == 0


# -- the table fitted to the screen (issue 26, item 8) --------------------------------------------


def _hint(app: LoratopApp) -> str:
    return " ".join(str(app.screen.query_one("#home-hint", Static).render()).split())


@pytest.mark.parametrize("width", [80, 120])
def test_the_home_screen_fits_its_width_keeping_the_tweak_loop_columns_and_names_the_rest(
    runs: Path, width: int
) -> None:
    """At 120 columns SPILLS, TIME and PARENT were off the edge (SPIKES cut to ``s``), at 80 EVAL:
    now every title shown is whole with nothing to scroll to, the knobs that tell reruns apart
    and the eval loss stay (a long name cut in the middle for them, its time stamp kept), and
    the hint names every column left out."""
    from loratop.tui.screens.home_screen import HOME_COLUMNS
    from tests.conftest import add_evals, copy_run, screen_text

    first = copy_run(runs, "tiny-r8", "tiny-cpu-demo-20261129-075650")
    second = copy_run(runs, "tiny-r16", "tiny-cpu-demo-20261129-080012", parent=str(first))
    add_evals(first, [(30, 6.31), (60, 6.2)])
    add_evals(second, [(60, 6.25)])
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(width, 24)) as pilot:
            await home_read(pilot)
            table = app.screen.query_one(DataTable)
            shown = [str(key.value) for key in table.columns]
            assert table.virtual_size.width <= table.scrollable_content_region.width, "columns off the edge"
            header = next(line for line in screen_text(app).splitlines() if " status " in line)
            assert [t for t in re.split(r"\s{2,}", header.strip())] == [str(c.label) for c in table.columns.values()]
            for column in ("run", "status", "step", "final loss", "knobs", "eval (best)"):
                assert column in shown, f"{column} left out at {width} columns"
            runs_shown = [Path(str(key.value)).name for key in table.rows]  # a name may be cut to make room
            evals = dict(zip(runs_shown, _column(table, "eval (best)"), strict=True))
            assert evals["tiny-cpu-demo-20261129-075650"] == "6.2000"
            knobs = dict(zip(runs_shown, _column(table, "knobs"), strict=True))
            assert knobs["tiny-cpu-demo-20261129-080012"] == "r16 α32 lr1e-3"  # what differs, whole
            for name, shown_name in zip(runs_shown, _names(table), strict=True):
                head, _, tail = shown_name.partition("…")
                assert name.startswith(head) and name.endswith(tail) and len(shown_name) >= min(len(name), 21)
            hint = _hint(app)
            assert "every run has b8×1 all7" in hint
            for column in set(HOME_COLUMNS) - set(shown):
                title = {"final loss": "loss"}.get(column, column)
                assert title in hint.split("a wider terminal shows ")[1], f"{column} left out without a word"

    asyncio.run(drive())


def test_a_running_runs_loss_is_its_loss_now_not_a_final_one(runs: Path) -> None:
    sink = _live_run(runs, max_steps=100)
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(160, 24)) as pilot:
            await home_read(pilot)
            table = app.screen.query_one(DataTable)
            losses = dict(zip(_names(table), _column(table, "final loss"), strict=True))
            assert losses["live"] == "2.0000 now"
            assert losses["tiny-r8"] == f"{of_type(read_events(runs / 'tiny-r8'), ev.STEP)[-1]['loss']:.4f}"
            titles = {str(key.value): str(column.label) for key, column in table.columns.items()}
            assert titles["final loss"] == "loss", "a column that holds a running run's loss is not titled final"

    asyncio.run(drive())
    sink.close()


# -- archive and delete (issue 26, item 13) -------------------------------------------------------


def _toasts(app: LoratopApp) -> list[str]:
    return [notification.message for notification in app._notifications]


def test_a_archives_the_run_out_of_the_list_and_ls_counts_it(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loratop.cli import main as cli
    from loratop.core.runs import summarise_run

    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(100, 30), notifications=True) as pilot:
            await home_read(pilot)
            table = app.screen.query_one(DataTable)
            table.move_cursor(row=_names(table).index("tiny-r8"))
            await pilot.press("a")
            await pilot.pause()
            assert sorted(_names(table)) == ["tiny-lr-high", "tiny-r16"]
            assert any(f"archived tiny-r8 into {runs / 'archive'}/" in toast for toast in _toasts(app))

    asyncio.run(drive())
    assert not (runs / "tiny-r8").exists()
    assert summarise_run(runs / "archive" / "tiny-r8").status == "completed", "every file kept, readable"
    assert cli.main(["ls", "--runs-dir", str(runs)]) == 0
    out, err = capsys.readouterr()
    assert not any(line.startswith("tiny-r8 ") for line in out.splitlines())
    assert f"(1 archived run in {runs / 'archive'}/, not listed)" in err
    assert out.count("tiny-r8 (archived)") == 2, "the parent of tiny-r16 and tiny-lr-high, archived, not gone"
    (runs / "archive" / "tiny-r8").rename(runs / "tiny-r8")  # and back with a mv
    assert cli.main(["ls", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("tiny-r8 ") for line in out.splitlines()) and "(archived)" not in out


def test_d_deletes_the_run_only_once_the_user_says_yes(runs: Path) -> None:
    from loratop.tui.screens.confirm_screen import ConfirmScreen

    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await home_read(pilot)
            home = app.screen
            table = home.query_one(DataTable)
            table.move_cursor(row=_names(table).index("tiny-r16"))
            await pilot.press("d")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmScreen)
            assert "Delete tiny-r16 for good?" in " ".join(str(app.screen.query_one(Static).render()).split())
            await pilot.press("escape")  # no
            await pilot.pause()
            assert app.screen is home and (runs / "tiny-r16" / "events.jsonl").is_file()
            await pilot.press("d")
            await pilot.pause()
            await pilot.press("y")
            await until(pilot, lambda: "tiny-r16" not in _names(table), 10, "the deleted run to leave the list")

    asyncio.run(drive())
    assert not (runs / "tiny-r16").exists()
    assert sorted(p.name for p in runs.iterdir()) == ["tiny-lr-high", "tiny-r8"]


def test_a_and_d_refuse_a_run_whose_trainer_lives(runs: Path) -> None:
    """One holds its trainer.lock (as every trainer does while it runs); one's status.json proves
    its trainer alive. Neither is archived, nor deleted, nor even asked about."""
    import json
    import os

    from loratop.core.archive import why_live
    from loratop.core.run_dir import hold_run_dir
    from tests.conftest import live_status

    locked, proven = runs / "tiny-r8", runs / "tiny-r16"
    lock = hold_run_dir(locked)  # this test stands in for the trainer: the lock is the kernel's
    lines = (proven / "events.jsonl").read_bytes().splitlines(keepends=True)
    (proven / "events.jsonl").write_bytes(b"".join(lines[:40]))  # still training: no run_finished yet
    (proven / "status.json").write_text(json.dumps(live_status(state="running")))
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(100, 30), notifications=True) as pilot:
            await home_read(pilot)
            home = app.screen
            table = home.query_one(DataTable)
            for run in (locked, proven):
                table.move_cursor(row=_names(table).index(run.name))
                await pilot.press("a")
                await pilot.pause()
                await pilot.press("d")
                await pilot.pause()
                assert app.screen is home, "no question asked about a live run"
                assert run.name in _names(table)
            said = "\n".join(_toasts(app))
            assert "not archived: tiny-r8 is training: its trainer holds trainer.lock" in said
            assert "not deleted: tiny-r8 is training: its trainer holds trainer.lock" in said
            assert f"not deleted: tiny-r16 is training: its trainer (pid {os.getpid()}) is alive" in said

    try:
        asyncio.run(drive())
        assert (locked / "events.jsonl").is_file() and (proven / "events.jsonl").is_file()
        assert not (runs / "archive").exists() or not any((runs / "archive").iterdir())
    finally:
        os.close(lock)
    assert why_live(locked) is None, "the lock released: the run may go"


def test_the_home_screens_live_look_at_the_runs_is_made_off_the_ui_thread(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 27, item 3: every 2 s the home screen looks at every run's files; that look runs on
    a worker, so a slow disk never stalls the screen, and its result still reaches the table."""
    import threading

    from loratop.core.runs import RunCatalog

    where: list[bool] = []
    real = RunCatalog.runs

    def watched(self: RunCatalog) -> Any:
        where.append(threading.current_thread() is threading.main_thread())
        return real(self)

    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(120, 30)) as pilot:
            table = app.screen.query_one(DataTable)
            await until(pilot, lambda: table.row_count == 3, 5, "the runs listed")
            monkeypatch.setattr(RunCatalog, "runs", watched)
            app.screen._refresh_live()  # what the 2 s timer calls
            await until(pilot, lambda: bool(where), 5, "the live look")
            await pilot.pause(0.2)
            assert table.row_count == 3

    asyncio.run(drive())
    assert where and not any(where), "a look at the runs was made on the UI thread"
