"""Every screen and dialog at 80×24 (the README says the dashboard stays readable there): what
matters is on screen, whole, without scrolling. Fed by the recorded runs of tests/data/runs.

Each test reads the screen as a user sees it (``screen_text``: one line per terminal row) and
saves an SVG screenshot (to ``$LORATOP_SCREENSHOTS`` when set) for a look.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Input

from loratop.tui.app import LoratopApp
from loratop.tui.screens.compare_screen import CompareScreen
from loratop.tui.screens.help_screen import SESSION_NOTE, HelpScreen
from loratop.tui.screens.home_screen import HomeScreen
from loratop.tui.screens.key_help import active_key_help
from loratop.tui.screens.knob_editor_screen import KnobEditor
from loratop.tui.screens.monitor_screen import MonitorScreen
from loratop.tui.screens.quit_screen import QuitScreen
from loratop.widgets import LossChart
from tests.conftest import RECORDED_RUNS, copy_run, screen_text, until

SIZE = (80, 24)
TICK = re.compile(r"^\s*(-?\d+(?:\.\d+)?) ┫", re.MULTILINE)
"""A y tick label on a chart's left axis."""


def _save(app: LoratopApp, name: str, tmp_path: Path) -> None:
    out = Path(os.environ.get("LORATOP_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}-80x24.svg").write_text(app.export_screenshot())


def _footer(app: LoratopApp) -> str:
    return screen_text(app).splitlines()[SIZE[1] - 1]


def _assert_whole_help(app: LoratopApp, under: Any) -> None:
    """The help dialog fits: nothing to scroll, inside the screen, every key of the screen
    ``under`` it, its last line and its esc hint shown."""
    assert isinstance(app.screen, HelpScreen)
    box = app.screen.query_one("#help", VerticalScroll)
    assert box.max_scroll_y == 0, f"the help needs scrolling at 80×24 ({box.max_scroll_y} rows hidden)"
    assert box.region.bottom <= SIZE[1] and box.region.right <= SIZE[0]
    text = screen_text(app)
    flat = " ".join(text.split())
    for row in active_key_help(under):
        assert " ".join(f"{row.keys} {row.text}".split()) in flat, f"{row.keys} is not in the help"
    assert " ".join(SESSION_NOTE.split()[-3:]) in flat, "the help's last line is cut off"
    assert re.search(r"esc\S* closes", flat), "the help must say how to close it"


async def _help_from(pilot: Any, app: LoratopApp, under: Any, name: str, tmp_path: Path) -> None:
    """``?`` over the screen ``under``: the whole help (saved as ``name``), and esc back to it."""
    await pilot.press("question_mark")
    await pilot.pause()
    _assert_whole_help(app, under)
    _save(app, name, tmp_path)
    await pilot.press("escape")
    await pilot.pause()
    assert app.screen is under


def _assert_even_ticks(text: str) -> None:
    """Round y ticks, evenly spaced, each shown once (none overwritten by its neighbour)."""
    ticks = [float(t) for t in TICK.findall(text)]
    assert len(ticks) >= 2, f"too few y ticks: {ticks}"
    steps = {round(a - b, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1, f"y ticks unevenly spaced: {ticks}"
    step = steps.pop()
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in (1.0, 2.0, 2.5, 5.0), f"not a round step: {step} ({ticks})"


def _plot_rows(chart: LossChart) -> int:
    """Rows of the chart's plot area between its two borders."""
    from textual_plot import PlotWidget

    plot = chart.query_one(PlotWidget)
    return plot.query_one("#plot").size.height - 2


async def _replayed(pilot: Any, app: LoratopApp) -> MonitorScreen:
    screen = app.screen
    assert isinstance(screen, MonitorScreen)
    await until(pilot, lambda: screen.state.finished is not None, 20, "the replay")
    # The chart is drawn on the next redraw tick after the replay: waited for, not assumed
    # (a fixed 0.6 s pause missed it once on a loaded box).
    await until(pilot, lambda: bool(TICK.search(screen_text(app))), 20, "the loss chart drawn")
    await pilot.pause(0.6)  # a redraw tick more: the panels around it settle
    return screen


def test_monitor_at_80x24_footer_ticks_and_the_log_pane(runs: Path, tmp_path: Path) -> None:
    app = LoratopApp(runs / "tiny-lr-high")

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await _replayed(pilot, app)
            text = screen_text(app)
            await until(pilot, lambda: _footer(app).strip() != "", 5, "the footer drawn")
            footer = _footer(app)
            for key in ("s stop", "q quit", "e rerun", "x export", "? help"):
                assert key in footer, f"the footer drops {key!r}: {footer!r}"
            _assert_even_ticks(text)
            chart = screen.query_one(LossChart)
            assert _plot_rows(chart) >= 6, "the chart's plot needs rows to read a curve"
            _save(app, "monitor", tmp_path)

            await pilot.press("g")  # the trainer's log pane
            await until(pilot, lambda: screen.query_one("#trainer-log").region.height > 0, 10, "the log pane")
            await pilot.pause(0.3)  # the chart's rows given back to it
            text = screen_text(app)
            log = screen.query_one("#trainer-log")
            assert log.region.height >= 4 and log.region.bottom <= SIZE[1]
            assert chart.region.height >= 8 and _plot_rows(chart) >= 4, "g squeezed the chart"
            for line in ("no NVIDIA GPU", "host RSS", "OOM risk n/a", "paged: nothing", "spikes 2"):
                assert line in text, f"{line!r} is hidden with the log pane open"
            _assert_even_ticks(text)
            for sel in ("#memory-panel", "#events-panel", "#status-line"):
                region = screen.query_one(sel).region
                assert region.height > 0 and region.bottom <= SIZE[1] - 1, f"{sel} is cut off with the log pane"
            _save(app, "monitor-log-pane", tmp_path)

    asyncio.run(drive())


def test_help_at_80x24_from_every_screen_is_whole(runs: Path, tmp_path: Path) -> None:
    """``?`` on the home screen, a run's monitor and compare: the whole help, with how to close it.
    (The editor's keys are all in its footer; there ``?`` may be typed into a field.)"""
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            home = app.screen
            assert isinstance(home, HomeScreen)
            await _help_from(pilot, app, home, "help-home", tmp_path)

            await pilot.press("enter")  # a run's monitor
            monitor = await _replayed(pilot, app)
            await _help_from(pilot, app, monitor, "help-monitor", tmp_path)
            assert "esc/q back" in screen_text(app) or "esc back" in _footer(app)
            await pilot.press("escape")
            assert app.screen is home

            home.sort_key = "name"
            home.action_reload()
            await pilot.pause()
            table = home.query_one(DataTable)
            table.move_cursor(row=1)  # tiny-r16: c compares it with its parent, tiny-r8
            await pilot.press("c")
            await pilot.pause()
            compare = app.screen
            assert isinstance(compare, CompareScreen)
            await _help_from(pilot, app, compare, "help-compare", tmp_path)

    asyncio.run(drive())


def test_quit_dialog_at_80x24_shows_its_question_and_every_choice(runs: Path, tmp_path: Path) -> None:
    app = LoratopApp(runs / "tiny-r8")

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await _replayed(pilot, app)
            await app.push_screen(QuitScreen())
            await until(pilot, lambda: "Cancel [esc]" in screen_text(app), 10, "the dialog drawn")
            text = " ".join(screen_text(app).split())
            for part in ("still training", "Stop training [s]", "Detach [d]", "Cancel [esc]"):
                assert part in text, f"{part!r} is cut off"
            dialog = app.screen.query_one(".dialog")
            assert dialog.region.bottom <= SIZE[1] and dialog.region.right <= SIZE[0]
            _save(app, "quit", tmp_path)

    asyncio.run(drive())


def test_home_at_80x24_shows_name_status_step_loss_and_knobs_without_scrolling(runs: Path, tmp_path: Path) -> None:
    """Even with a launched run's long name (``<config>-<date>-<time>``)."""
    long_name = "tiny-cpu-demo-edited-20261105-143012"
    copy_run(runs, "tiny-r16", long_name, parent=str(runs / "tiny-r8"))
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            table = app.screen.query_one(DataTable)
            assert table.scroll_x == 0
            lines = screen_text(app).splitlines()
            header = next(line for line in lines if "status" in line)
            for title in ("run", "status", "step", "loss", "knobs"):
                assert title in header, f"{title!r} needs scrolling right at 80 columns: {header!r}"
            row = next(line for line in lines if "143012" in line)  # the name keeps its time stamp
            assert "completed" in row and "60/60" in row and "6.0724" in row, row
            await until(pilot, lambda: _footer(app).strip() != "", 5, "the footer drawn")
            footer = _footer(app)
            for key in ("e rerun", "c compare", "x export", "r refresh", "q quit", "? help"):
                assert key in footer, f"the footer drops {key!r}: {footer!r}"
            _save(app, "home", tmp_path)

    asyncio.run(drive())


def test_compare_at_80x24_every_column_header_is_distinct_and_whole(runs: Path, tmp_path: Path) -> None:
    """Two reruns of one config differ only in their time stamps: the headers must tell them apart."""
    first = copy_run(runs, "tiny-r8", "tiny-cpu-demo-edited-20261105-143012")
    second = copy_run(runs, "tiny-r16", "tiny-cpu-demo-edited-20261105-143105")
    third = copy_run(runs, "tiny-lr-high", "tiny-cpu-demo-edited-20261105-150230")
    app = LoratopApp(None, compare=[first, second, third])

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, CompareScreen)
            table = screen.query_one(DataTable)
            labels = [str(column.label) for column in table.columns.values()][1:]
            assert len(set(labels)) == 3, f"column headers alike: {labels}"
            for label, stamp in zip(labels, ("143012", "143105", "150230"), strict=True):
                assert stamp in label, f"{label!r} hides what tells it apart ({stamp})"
            header = next(line for line in screen_text(app).splitlines() if "143012" in line and "143105" in line)
            assert all(label in header for label in labels), header
            _assert_even_ticks(screen_text(app))
            await until(pilot, lambda: "esc back" in _footer(app), 5, "the footer's esc back")
            _save(app, "compare", tmp_path)

    asyncio.run(drive())


def test_editor_at_80x24_opens_on_its_first_knob_with_its_actions_in_view(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(RECORDED_RUNS, runs)
    app = LoratopApp(None, runs_root=runs, edit=runs / "tiny-r8")

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, KnobEditor), 5, "the editor")
            await until(pilot, lambda: "from run tiny-r8" in screen_text(app), 10, "the editor drawn")
            await pilot.pause(0.2)
            text = screen_text(app)
            assert "edit knobs · from run tiny-r8" in text
            assert isinstance(app.focused, Input) and app.focused.id == "knob-lora-r"
            for part in ("Save", "Launch", "Save+launch", "α/r = 16/8"):
                assert part in text, f"{part!r} is not in view"
            await until(pilot, lambda: _footer(app).strip() != "", 5, "the footer drawn")  # a busy box draws late
            footer = _footer(app)
            for key in ("esc back", "^r launch", "^s save as", "^b save+launch"):
                assert key in footer, footer
            _save(app, "editor", tmp_path)

    asyncio.run(drive())


def test_the_log_pane_reads_the_trainers_log_off_the_ui_thread(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 27, item 3: a slow disk (or a network folder) under trainer.log never stalls a
    redraw: every read of it happens on a worker thread, and what it read reaches the pane."""
    import threading

    log_file = runs / "tiny-lr-high" / "trainer.log"
    log_file.write_text("first line of the log\n")
    readers: list[bool] = []
    real_stat = Path.stat

    def watched_stat(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "trainer.log":
            readers.append(threading.current_thread() is threading.main_thread())
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", watched_stat)
    app = LoratopApp(runs / "tiny-lr-high")

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await _replayed(pilot, app)
            await pilot.press("g")
            log = app.screen.query_one("#trainer-log")
            await until(pilot, lambda: any("first line" in strip.text for strip in log.lines), 5, "the log's line")

    asyncio.run(drive())
    assert readers and not any(readers), "trainer.log was read on the UI thread"


def test_the_log_pane_at_80x24_wraps_long_lines_and_labels_the_harmless_cpu_warnings(
    runs: Path, tmp_path: Path
) -> None:
    """Issue 26, item 12. The trainer's log of a real CPU run of the demo (its first 20 lines,
    then 3 of its per-step metric printouts): a long line reads whole at 80 columns (wrapped, not
    cut); bitsandbytes' warnings say they are expected on CPU and harmless, and still show; a
    per-step printout keeps to one row."""
    from tests.conftest import REPO

    # Bytes: its progress bars redraw with \r, which text mode would read as line ends.
    recorded = (REPO / "tests" / "data" / "trainer-cpu-demo.log").read_bytes().split(b"\n")
    log_file = runs / "tiny-lr-high" / "trainer.log"
    log_file.write_bytes(b"\n".join(recorded[:20]) + b"\n")  # ends with the paged-optimizer warning and its source line
    app = LoratopApp(runs / "tiny-lr-high")

    def pane_rows() -> list[str]:
        region = app.screen.query_one("#trainer-log").region
        rows = screen_text(app).splitlines()[region.y : region.bottom]
        return [row[region.x : region.right].rstrip() for row in rows]

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await _replayed(pilot, app)
            await pilot.press("g")
            await until(pilot, lambda: "behavior." in " ".join(pane_rows()), 5, "the warning's end on screen")
            rows = pane_rows()
            flat = " ".join(" ".join(rows).split())
            assert "(expected on CPU, harmless: nothing is paged without a GPU" in flat, rows
            assert "UserWarning: Paged optimizers are not supported on CPU. Falling back to non-paged" in flat
            assert 'state["state1"] = self.get_state_buffer(p, dtype=torch.float32)' in flat
            _save(app, "monitor-log-wrapped", tmp_path)

            with log_file.open("ab") as fh:
                fh.write(b"\n".join(recorded[20:23]) + b"\n")  # three per-step printouts
            await until(pilot, lambda: pane_rows()[-1].startswith("{'loss'"), 5, "the printouts")
            printouts = [row for row in pane_rows() if row.startswith("{'loss'")]
            assert len(printouts) == 3 and all(row.endswith("…") for row in printouts), pane_rows()

            # The whole log, as the pane holds it: the first warning labelled, and whole.
            whole = " ".join(" ".join(strip.text for strip in app.screen.query_one("#trainer-log").lines).split())
            assert "(harmless: bitsandbytes runs its built-in CPU kernel (the hub's optional one" in whole
            assert "Please make sure you already `pip install kernels` and the kernels >= 0.11.1" in whole

    asyncio.run(drive())
