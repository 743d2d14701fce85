"""issue 26: the monitor's charts as a user drives them at 80×24 — the loss chart's cursor and
zoom keys, and the grad-norm sparkline. Fed by the recorded runs of tests/data/runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from textual.widgets import Sparkline

from loratop.core import events as ev
from loratop.tui.app import LoratopApp
from loratop.tui.screens.help_screen import HelpScreen
from loratop.tui.screens.monitor_screen import MonitorScreen
from loratop.widgets import LossChart
from loratop.widgets.key_footer import GROUPS_FROM
from tests.conftest import read_events, replay_drawn, screen_text, until

SIZE = (80, 24)


async def _replayed(pilot: Any, app: LoratopApp) -> MonitorScreen:
    screen = app.screen
    assert isinstance(screen, MonitorScreen)
    await replay_drawn(pilot, screen)
    return screen


def test_the_grad_norm_sparkline_follows_the_grad_norm_not_the_lr(runs: Path) -> None:
    """The sparkline beside "grad norm" plotted the lr schedule; now each has its own."""
    steps = [e for e in read_events(runs / "tiny-lr-high") if e["type"] == ev.STEP]
    grad = [float(e["grad_norm"]) for e in steps]
    lr = [float(e["lr"]) for e in steps]
    assert grad != lr and len(steps) <= 200
    app = LoratopApp(runs / "tiny-lr-high")

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await _replayed(pilot, app)
            assert screen.query_one("#grad-spark", Sparkline).data == grad
            assert screen.query_one("#lr-spark", Sparkline).data == lr
            text = screen_text(app)
            assert f"grad norm {grad[-1]:.4f}" in text and f"lr {lr[-1]:.2e}" in text
            # Each value has its sparkline on its own row, beside it, inside the panel.
            panel = screen.query_one("#lr-panel").region
            for row, label in ((screen.query_one("#grad-spark"), "grad norm"), (screen.query_one("#lr-spark"), "lr ")):
                line = text.splitlines()[row.region.y]
                assert label in line and row.region.height == 1 and row.region.width >= 10, line
                assert row.region.right <= panel.right, "the sparkline runs under the next panel"

    asyncio.run(drive())


def test_the_loss_chart_cursor_and_zoom_keys_at_80x24(runs: Path) -> None:
    steps = [e for e in read_events(runs / "tiny-lr-high") if e["type"] == ev.STEP]
    app = LoratopApp(runs / "tiny-lr-high")

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await _replayed(pilot, app)
            chart = screen.query_one(LossChart)
            drawn = chart.redraw_count
            await pilot.press("right_square_bracket")  # ]: the cursor, on the latest step
            await pilot.pause()
            last = steps[-1]
            readout = f"step {last['step']} · loss {last['loss']:.4f}"
            chart_rows = screen_text(app).splitlines()[chart.region.y : chart.region.bottom]
            assert readout in chart_rows[0] and f"lr {last['lr']:.2e}" in chart_rows[0], chart_rows[0]
            await pilot.press(*["left_square_bracket"] * 3)  # [: back
            await pilot.pause()
            i = chart.view.cursor
            assert i is not None and i < len(steps) - 1
            assert f"step {steps[i]['step']} · loss {steps[i]['loss']:.4f}" in screen_text(app)
            assert chart.redraw_count == drawn, "moving the cursor redrew the plot"

            await pilot.press("z")  # zoom on the cursor
            await pilot.pause()
            assert chart.view.window is not None and chart.axes is not None
            lo, hi = chart.view.window
            assert lo <= steps[i]["step"] <= hi and hi - lo == 30  # a quarter of the run's 120 steps
            assert chart.axes[0] == lo and "zoom" in chart.readout
            await pilot.press("0")  # the whole run again
            await pilot.pause()
            assert chart.view.window is None and chart.view.cursor is None and chart.readout == ""
            assert chart.axes is not None and chart.axes[0] == 0.0
            await pilot.press("z", "Z")  # Z does the same as 0
            await pilot.pause()
            assert chart.view.window is None

            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            help_text = " ".join(screen_text(app).split())
            for key in ("[ loss chart: cursor back", "] loss chart: cursor on", "z loss chart: zoom", "0/Z loss chart"):
                assert key in help_text, f"{key!r} is not in the help"

    asyncio.run(drive())


def test_the_footer_shows_the_chart_keys_where_they_fit(runs: Path) -> None:
    """At 80 columns the footer keeps the monitor's own keys whole (the help lists the chart's);
    from :data:`GROUPS_FROM` columns it shows them too, with the palette's key."""
    app = LoratopApp(runs / "tiny-r8")

    async def drive() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await _replayed(pilot, app)
            footer = screen_text(app).splitlines()[-1]
            assert "? help" in footer and "cursor" not in footer, footer
            await pilot.resize_terminal(GROUPS_FROM, 30)
            await until(pilot, lambda: "cursor" in screen_text(app).splitlines()[-1], 10, "the wider footer")
            footer = screen_text(app).splitlines()[-1]
            for key in ("[] cursor", "z0 zoom", "x export", "? help", "^p palette"):
                assert key in footer, f"{key!r} is not in the footer: {footer!r}"

    asyncio.run(drive())
