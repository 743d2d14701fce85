"""The reusable widgets: memory lines as pure data, and LossChart/MemoryPanel in a real app."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import Static

from loratop.widgets import LossChart, MemoryPanel
from loratop.widgets.downsample import ema
from loratop.widgets.memory_panel import memory_lines
from loratop.widgets.units import fmt_bytes as format_bytes

GIB = 1024**3
MIB = 1024**2


def _host() -> dict[str, int]:
    return {"rss": int(1.8 * GIB), "total": int(23.5 * GIB), "available": int(20.2 * GIB)}


def _gpu_sample(used_gib: float, total_gib: float = 139.8, torch: bool = True) -> dict[str, Any]:
    gpu: dict[str, Any] = {
        "index": 0,
        "name": "NVIDIA H200",
        "used": int(used_gib * GIB),
        "total": int(total_gib * GIB),
        "free": int((total_gib - used_gib) * GIB),
    }
    if torch:
        gpu["torch"] = {"allocated": int(30.1 * GIB), "reserved": int(33.0 * GIB), "peak": int(35.2 * GIB)}
    return {"host": _host(), "gpu_state": "ok", "gpus": [gpu]}


def _plain(lines: list[Text]) -> str:
    return "\n".join(line.plain for line in lines)


def _bar_colour(line: Text) -> str:
    """The style of the bar's filled part."""
    for span in line.spans:
        if "█" in line.plain[span.start : span.end]:
            return str(span.style)
    raise AssertionError(f"no filled bar in {line.plain!r}")


# ---------------------------------------------------------------- memory_lines (pure)


def test_bytes_are_gib_with_one_decimal_from_one_gib_else_whole_mib() -> None:
    assert format_bytes(int(41.25 * GIB)) == "41.2 GiB"
    assert format_bytes(GIB) == "1.0 GiB"
    assert format_bytes(512 * MIB) == "512 MiB"
    # One formatter for the panels, the widgets and the headless line (issue 11): below a
    # MiB it says KiB or B rather than rounding to "0 MiB"; unknown is "?", never 0.
    assert format_bytes(0) == "0 B"
    assert format_bytes(256 * 1024) == "256 KiB"
    assert format_bytes(None) == "?"


def test_gpu_sample_shows_bar_figures_torch_and_host() -> None:
    lines = memory_lines(_gpu_sample(41.2), width=60)
    text = _plain(lines)

    assert lines[0].plain.startswith("gpu0 H200")
    assert "41.2/139.8 GiB" in lines[0].plain
    assert "█" in lines[0].plain and "░" in lines[0].plain
    assert "torch" in lines[1].plain and "30.1" in lines[1].plain
    assert "33.0" in lines[1].plain and "35.2" in lines[1].plain
    assert "host RSS 1.8 GiB of 23.5 GiB" in text
    assert "NVIDIA" not in text


def test_bar_colour_follows_the_thresholds() -> None:
    def colour(used_gib: float) -> str:
        return _bar_colour(memory_lines(_gpu_sample(used_gib, total_gib=100.0), width=60)[0])

    assert colour(50.0) == "green"
    assert colour(79.9) == "green"
    assert colour(80.0) == "yellow"
    assert colour(91.9) == "yellow"
    assert colour(92.0) == "red"
    assert colour(99.0) == "red"


def test_no_torch_figures_means_no_torch_line() -> None:
    text = _plain(memory_lines(_gpu_sample(10.0, torch=False), width=60))

    assert "torch" not in text
    assert "alloc" not in text


def test_no_gpu_shows_host_memory_and_no_invented_gpu_figures() -> None:
    sample = {"host": _host(), "gpu_state": "no_nvidia_gpu", "gpu_note": "NVML found no GPU", "gpus": []}

    lines = memory_lines(sample, width=38)
    text = _plain(lines)

    assert lines[0].plain == "no NVIDIA GPU — showing host memory"
    assert "1.8/23.5 GiB" in text
    assert "█" in text or "░" in text
    assert "gpu0" not in text
    assert "0.0 GiB" not in text and " 0 MiB" not in text


def test_nvml_error_shows_the_note_and_host() -> None:
    sample = {"host": _host(), "gpu_state": "nvml_error", "gpu_note": "NVML read failed: GPU is lost", "gpus": []}

    text = _plain(memory_lines(sample, width=60))

    assert "GPU n/a: NVML read failed: GPU is lost" in text
    assert "host RSS 1.8 GiB of 23.5 GiB" in text
    assert "0.0 GiB" not in text


def test_no_sample_yet() -> None:
    assert _plain(memory_lines(None, width=38)) == "memory: waiting for the first sample"


def test_no_sample_ever_once_the_run_ended() -> None:
    assert _plain(memory_lines(None, width=60, ended=True)) == "memory: none sampled (the run ended first)"


def test_missing_figures_show_as_n_a_never_zero() -> None:
    sample = {"host": {"total": int(23.5 * GIB)}, "gpu_state": "ok", "gpus": [{"index": 1, "name": "NVIDIA A100"}]}

    text = _plain(memory_lines(sample, width=38))

    assert "gpu1" in text and "n/a" in text
    assert "host RSS n/a" in text
    assert "0 MiB" not in text and "0.0 GiB" not in text


def test_every_line_fits_narrow_widths() -> None:
    long_name = _gpu_sample(120.0)
    long_name["gpus"][0]["name"] = "NVIDIA GeForce RTX 4090 Laptop GPU With A Very Long Name"
    mixed_units = _gpu_sample(0.4, total_gib=16.0)
    samples = [
        _gpu_sample(41.2),
        long_name,
        mixed_units,
        {"host": _host(), "gpu_state": "no_nvidia_gpu", "gpus": []},
        {"host": _host(), "gpu_state": "nvml_error", "gpu_note": "x" * 200, "gpus": []},
        None,
    ]
    for width in (38, 30, 24, 16, 8):
        for sample in samples:
            for line in memory_lines(sample, width):
                assert line.cell_len <= width, (width, line.plain)
                assert "\n" not in line.plain


def test_a_38_column_panel_keeps_name_bar_and_figures() -> None:
    lines = memory_lines(_gpu_sample(41.2), width=38)

    assert lines[0].plain.startswith("gpu0 H200")
    assert lines[0].plain.endswith("41.2/139.8 GiB")
    assert lines[0].plain.count("█") + lines[0].plain.count("░") >= 10
    assert lines[1].plain.startswith("torch") and lines[1].plain.endswith("GiB")


# ---------------------------------------------------------------- widgets in a real app


class _WidgetApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LossChart()
        yield MemoryPanel()


def _series(n: int, spike_at: int) -> tuple[list[float], list[float], list[float]]:
    random.seed(5)
    steps = [float(i) for i in range(n)]
    loss = [2.0 * math.exp(-i / (n / 3)) + 0.05 * random.random() for i in range(n)]
    loss[spike_at] = 40.0
    loss[spike_at + 10] = math.nan
    return steps, loss, ema(loss, 0.01)


def _screen_text(app: App[Any]) -> str:
    # SVG keeps each space as &#160;
    return app.export_screenshot().replace("&#160;", " ")


def test_loss_chart_and_memory_panel_in_an_app() -> None:
    async def scenario() -> None:
        app = _WidgetApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            chart = app.query_one(LossChart)
            panel = app.query_one(MemoryPanel)
            assert "waiting for the first step" in _screen_text(app)
            assert "memory: waiting for the first sample" in _screen_text(app)
            assert chart.query_one("#loss-chart-empty", Static).display

            steps, loss, smoothed = _series(100_000, spike_at=42_000)
            chart.update(steps, loss, smoothed, spikes=[(42_000.0, 40.0)])
            panel.update(_gpu_sample(41.2))
            await pilot.pause()

            assert "waiting for the first step" not in _screen_text(app)
            assert not chart.query_one("#loss-chart-empty", Static).display
            assert 10 <= chart.last_buckets <= 80
            # two lines of at most two points per bucket, plus the one marker
            assert 0 < chart.last_plotted_points <= 4 * chart.last_buckets + 1
            screen = _screen_text(app)
            assert "41.2/139.8" in screen
            assert "step" in screen and "loss" in screen

            chart.log_scale = True
            await pilot.pause()
            assert "log10 loss" in _screen_text(app)
            assert 0 < chart.last_plotted_points <= 4 * chart.last_buckets + 1

            redraws = chart.redraw_count
            chart.update(steps, loss, smoothed, spikes=[(42_000.0, 40.0)])
            await pilot.pause()
            assert chart.redraw_count == redraws  # same data, no redraw

            chart.log_scale = False
            await pilot.pause()
            assert "log10 loss" not in _screen_text(app)

    asyncio.run(scenario())


def test_loss_chart_with_only_non_finite_losses_says_so() -> None:
    async def scenario() -> None:
        app = _WidgetApp()
        async with app.run_test(size=(80, 24)) as pilot:
            chart = app.query_one(LossChart)
            chart.update([1.0, 2.0], [math.nan, math.inf], [math.nan, math.nan])
            await pilot.pause()
            assert "no finite loss to plot yet" in _screen_text(app)

            chart.update([1.0, 2.0, 3.0], [math.nan, math.inf, 2.5], [math.nan, math.nan, 2.5])
            await pilot.pause()
            assert chart.last_plotted_points == 2  # one point per line, drawn as a dot

    asyncio.run(scenario())


def test_memory_panel_without_gpu_in_a_narrow_app() -> None:
    class NarrowApp(App[None]):
        CSS = "MemoryPanel { width: 38; }"

        def compose(self) -> ComposeResult:
            yield MemoryPanel()

    async def scenario() -> None:
        app = NarrowApp()
        async with app.run_test(size=(80, 24)) as pilot:
            panel = app.query_one(MemoryPanel)
            panel.update({"host": _host(), "gpu_state": "no_nvidia_gpu", "gpus": []})
            await pilot.pause()
            screen = _screen_text(app)
            assert "no NVIDIA GPU — showing host memory" in screen
            assert "1.8/23.5 GiB" in screen
            assert panel.size.height == 2

    asyncio.run(scenario())


def test_a_live_chart_keeps_its_axes_and_redraws_only_when_a_dot_moves() -> None:
    async def scenario() -> None:
        app = _WidgetApp()
        async with app.run_test(size=(80, 24)) as pilot:
            chart = app.query_one(LossChart)
            steps = [float(i) for i in range(1, 101)]  # all in the first column of a 10k-step axis
            loss = [2.0 - i / 1000 for i in range(1, 101)]
            chart.update(steps, loss, loss, x_range=(0.0, 10_000.0))
            await pilot.pause()
            drawn, limits = chart.redraw_count, chart.axes
            assert limits is not None and limits[:2] == (0.0, 10_000 + 10_000 / chart.last_buckets)
            assert 10_000 / chart.last_buckets > 101
            # A step whose loss lies inside its column's range moves no dot: no redraw.
            steps, loss = [*steps, 101.0], [*loss, 1.95]
            chart.update(steps, loss, loss, x_range=(0.0, 10_000.0))  # the first after layout may redraw
            await pilot.pause()
            drawn, skipped = chart.redraw_count, chart.skipped_redraws
            chart.update([*steps, 102.0], [*loss, 1.96], [*loss, 1.96], x_range=(0.0, 10_000.0))
            await pilot.pause()
            assert chart.redraw_count == drawn and chart.skipped_redraws == skipped + 1
            # A new low far below moves dots (and widens the y axis, with room to spare).
            chart.update([*steps, 102.0], [*loss, 1.0], [*loss, 1.5], x_range=(0.0, 10_000.0))
            await pilot.pause()
            assert chart.redraw_count == drawn + 1
            assert chart.axes is not None and chart.axes[:2] == limits[:2], "the x axis stays put"
            assert chart.axes[2] < 1.0 < 1.9 < limits[3] <= chart.axes[3]
            # The same values again: the y axis does not move back and forth.
            y_now = chart.axes[2:]
            chart.update([*steps, 102.0, 103.0], [*loss, 1.0, 1.9], [*loss, 1.5, 1.5], x_range=(0.0, 10_000.0))
            await pilot.pause()
            assert chart.axes is not None and chart.axes[2:] == y_now

    asyncio.run(scenario())


def test_y_ticks_are_round_evenly_spaced_and_one_to_a_row() -> None:
    """textual-plot's five-or-so ticks on a four-row plot overwrote each other (7.0, 6.6, 6.2, 6.0)."""
    from loratop.widgets.loss_chart import _y_ticks_that_fit

    def rows_of(ticks: list[float], lo: float, hi: float, rows: int) -> list[int]:
        return [math.ceil(rows * (hi - t) / (hi - lo)) + (t == lo) for t in ticks]

    for lo, hi, rows in [(5.85, 7.12, 4), (5.85, 7.12, 7), (5.85, 7.12, 30), (0.001, 0.004, 5), (-0.3, 0.9, 3)]:
        ticks = _y_ticks_that_fit(lo, hi, rows)
        assert len(ticks) >= 2, (lo, hi, rows)
        steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
        assert len(steps) == 1, ticks
        step = steps.pop()
        assert round(step / 10 ** math.floor(math.log10(step)), 6) in (1.0, 2.0, 5.0), ticks
        at = rows_of(ticks, lo, hi, rows)
        gap = 2 if rows >= 4 else 1
        assert all(abs(a - b) >= gap for a, b in zip(at, at[1:], strict=False)), (ticks, at)
    assert _y_ticks_that_fit(5.85, 7.12, 4) == [6.0, 7.0]
    assert _y_ticks_that_fit(5.85, 7.12, 7) == [6.0, 6.5, 7.0]
    assert _y_ticks_that_fit(1.0, 1.0, 5) == [] and _y_ticks_that_fit(1.0, 2.0, 0) == []


def test_the_y_title_is_rewritten_whole_when_the_scale_toggles_twice() -> None:
    """issue 26, item 6: ``l`` twice left ``loglossoss`` (the shorter title written over the longer)."""

    async def scenario() -> None:
        app = _WidgetApp()
        async with app.run_test(size=(80, 24)) as pilot:
            chart = app.query_one(LossChart)
            steps, loss, smoothed = _series(200, spike_at=50)
            chart.update(steps, loss, smoothed)
            await pilot.pause()
            for log in (True, False):
                chart.log_scale = log
                await pilot.pause()
            screen = _screen_text(app)
            assert "loglossoss" not in screen and "log10" not in screen and " loss " in screen

    asyncio.run(scenario())


# ---------------------------------------------------------------- issue 26: x axis, cursor, zoom


def _x_ticks(app: App[Any]) -> list[int]:
    """The x tick labels under the chart, as drawn (the row under the plot's bottom border)."""
    lines = _screen_text_rows(app)
    bottom = max(i for i, line in enumerate(lines) if "┛" in line)
    return [int(label) for label in lines[bottom + 1].split()]


def _screen_text_rows(app: App[Any]) -> list[str]:
    from tests.conftest import screen_text

    return screen_text(app).splitlines()


def test_a_finished_runs_chart_keeps_the_0_tick_its_live_chart_had() -> None:
    """issue 26, item 12: at the end of a run (no fixed x axis any more) the x axis started at
    step 1, the first step, and lost its 0 tick."""

    async def scenario() -> None:
        app = _WidgetApp()
        async with app.run_test(size=(80, 24)) as pilot:
            chart = app.query_one(LossChart)
            steps = [float(i) for i in range(1, 121)]
            loss = [7.0 - i / 100 for i in range(1, 121)]
            chart.update(steps, loss, loss, x_range=(0.0, 120.0))  # live
            await pilot.pause()
            live = _x_ticks(app)
            assert live[0] == 0 and live[-1] == 120, live
            chart.update(steps, loss, loss)  # ended: the axis fits the data
            await pilot.pause()
            assert chart.axes is not None and chart.axes[0] == 0.0
            assert _x_ticks(app) == live

    asyncio.run(scenario())


def _lr(n: int) -> list[float]:
    return [1e-3 * min(1.0, i / 10) for i in range(1, n + 1)]  # a warmup, then flat


def test_the_cursor_reads_a_step_and_moves_without_redrawing_the_plot() -> None:
    """issue 26, item 13: a readout of a chart point. A cursor move repaints a column and a
    line over the plot (what an SSH link pays for), never the plot."""

    async def scenario() -> None:
        app = _WidgetApp()
        async with app.run_test(size=(80, 24)) as pilot:
            chart = app.query_one(LossChart)
            steps = [float(i) for i in range(1, 121)]
            loss = [7.0 - i / 100 for i in range(1, 121)]
            smoothed = ema(loss, 0.2)
            chart.update(steps, loss, smoothed, lr=_lr(120))
            await pilot.pause()
            assert chart.readout == "" and "│" not in _screen_text(app)
            drawn = chart.redraw_count

            chart.move_cursor(1)  # the first move shows the cursor on the latest step
            await pilot.pause()
            assert chart.readout == f"step 120 · loss 5.8000 · smoothed {smoothed[-1]:.4f} · lr 1.00e-03"
            rows = _screen_text_rows(app)
            assert chart.readout in rows[0]
            assert sum("│" in row for row in rows) >= 10, "the cursor's line down the plot"
            assert sum("●" in row for row in rows) == 1, "the marker on the step's loss"

            cells = chart.last_buckets  # 120 steps on ~68 cells: two steps a cell
            for _ in range(5):
                chart.move_cursor(-1)
            await pilot.pause()
            i = 119 - 5 * round(120 / cells)
            assert chart.view.cursor == i
            assert chart.readout.startswith(f"step {i + 1} · loss {loss[i]:.4f}")
            assert chart.readout in _screen_text_rows(app)[0]
            assert chart.redraw_count == drawn, "a cursor move redrew the plot"

            chart.move_cursor(-1000)  # stops at the first step
            assert chart.view.cursor == 0
            chart.update([*steps, 121.0], [*loss, 5.79], [*smoothed, 5.8], lr=_lr(121))
            assert chart.view.cursor == 0, "a cursor off the latest step stays on its step"
            chart.move_cursor(1000)
            chart.update([*steps, 121.0, 122.0], [*loss, 5.79, 5.78], [*smoothed, 5.8, 5.79], lr=_lr(122))
            assert chart.view.cursor == 121, "a cursor on the latest step follows the live run"

    asyncio.run(scenario())


def test_zoom_shows_the_steps_around_the_cursor_and_reset_the_whole_run() -> None:
    async def scenario() -> None:
        app = _WidgetApp()
        async with app.run_test(size=(80, 24)) as pilot:
            chart = app.query_one(LossChart)
            n = 4000
            steps = [float(i) for i in range(1, n + 1)]
            loss = [2.0 + math.sin(i / 50) for i in range(1, n + 1)]
            chart.update(steps, loss, loss, lr=_lr(n))
            await pilot.pause()
            assert chart.zoom_in()  # no cursor: the latest steps
            await pilot.pause()
            assert chart.view.window == (3000.0, 4000.0)
            assert chart.axes is not None and chart.axes[:2] == (3000.0, 4000.0 + 1000 / chart.last_buckets)
            ticks = _x_ticks(app)
            assert ticks[0] >= 3000 and ticks[-1] <= 4000, ticks
            assert "zoomed to steps 3000–4000" in _screen_text_rows(app)[0]

            chart.move_cursor(-1)  # on the latest step
            for _ in range(20):
                chart.move_cursor(-1)
            assert chart.zoom_in()  # 250 steps around the cursor, which stays put
            await pilot.pause()
            step = steps[chart.view.cursor or 0]
            lo, hi = chart.view.window or (0.0, 0.0)
            assert hi - lo == 250 and lo < step < hi
            # At its zoom the chart draws the window's own points: finer than the whole run's.
            assert chart.last_plotted_points >= 2 * min(250, chart.last_buckets)
            assert f"step {step:.0f}" in chart.readout and "zoom" in chart.readout
            assert chart.zoom_in() and chart.zoom_in() and chart.zoom_in()  # 62.5, 15.6, then 10 steps
            assert not chart.zoom_in(), "10 steps is as far as it zooms"
            assert chart.view.window is not None and chart.view.window[1] - chart.view.window[0] == 10

            chart.reset_view()
            await pilot.pause()
            assert chart.view.window is None and chart.view.cursor is None and chart.readout == ""
            assert chart.axes is not None and chart.axes[0] == 0.0
            assert "│" not in _screen_text(app) and "zoom" not in _screen_text(app)

    asyncio.run(scenario())


def test_chart_view_walks_a_zoomed_window_half_a_window_at_a_time() -> None:
    from loratop.widgets.chart_view import ChartView

    steps = list(range(1, 1001))
    view = ChartView()
    assert not view.move([], 1, 50) and view.cursor is None
    assert view.zoom_in(steps, (0.0, 1000.0)) and view.window == (750.0, 1000.0)
    assert not view.move(steps, -1, 50) and view.cursor == 999  # shown on the latest step
    moved = [view.move(steps, -1, 50) for _ in range(60)]
    # 250 steps in view, 50 cells: 5 steps a press. Past the window's edge (step 745) the
    # window slid by half its width, once, not at every press.
    assert view.cursor == 999 - 60 * 5
    assert moved.index(True) == 50 and sum(moved) == 1 and view.window == (625.0, 875.0)
    assert view.readout(steps, [1.0] * 1000, [math.nan] * 1000, [math.nan] * 1000, 80) == (
        "step 700 · loss 1.0000 · lr – · zoom 625–875"
    )
    short = view.readout(steps, [1.0] * 1000, [1e-4] * 1000, [math.nan] * 1000, 30)
    assert short == "step 700 · loss 1.0000 · lr 1.00e-04"  # the zoom's words go first
    view.reset()
    assert view.readout(steps, [], [], [], 80) == ""
