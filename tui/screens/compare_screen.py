"""The compare screen: two or more runs' loss curves overlaid, and what differs between them.

Each run gets a letter and a colour (A is the base); the legend labels B, C, ... by what
changed from A ("r 8 → 16, learning_rate 2e-3 → 1e-3"). Under the chart, one table holds
the config diff and the outcomes. The analysis is ``tui.models.compare`` (no Textual); this
module draws it.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.events import Resize
from textual.widgets import DataTable, Static
from textual.worker import get_current_worker

from loratop.tui.models import compare
from loratop.tui.screens.loratop_screen import LoratopScreen
from loratop.widgets import CompareChart, KeyFooter, Series
from loratop.widgets.compare_chart import PALETTE
from loratop.widgets.downsample import ema, smoothing_alpha

X_AXES = ("steps", "tokens")


MIN_NAME = 12
"""A column's run name is never cut shorter than this (the table scrolls sideways instead)."""


class CompareScreen(LoratopScreen[None]):
    """Runs side by side: overlaid curves (steps or tokens), config diff, outcomes."""

    BINDINGS = [
        Binding("escape,q", "back", "back"),
        Binding("x", "x_axis", "steps/tokens", tooltip="plot over optimizer steps or over tokens seen"),
        Binding("m", "smooth", "raw/smoothed", tooltip="per-step loss or EMA-smoothed loss"),
        Binding("l", "log_scale", "log y", tooltip="loss chart: log scale on/off"),
        Binding("p", "save_svg", "save SVG", tooltip="save this screen as SVG in loratop-exports/, named by the runs"),
        Binding("question_mark", "app.help", "help", tooltip="this help: every key and what it does"),
    ]

    def __init__(self, run_dirs: list[Path], x_axis: str = "steps") -> None:
        super().__init__()
        self.run_dirs = list(run_dirs)
        self.runs: list[compare.ComparedRun] = []
        """The runs, folded on a worker once the screen shows (a long run's fold takes a while)."""
        self.x_axis = x_axis if x_axis in X_AXES else "steps"
        self.smoothed = True
        """Draw each run's EMA-smoothed loss (raw per-step losses of several runs overlap into noise)."""
        self._table_width: int | None = None
        """The screen width the table's column titles were cut for."""

    def compose(self) -> ComposeResult:
        yield Static(id="compare-legend")
        yield CompareChart(id="compare-chart")
        yield DataTable(id="compare-table", zebra_stripes=True, cursor_type="row")
        yield KeyFooter()

    def on_mount(self) -> None:
        count = len(self.run_dirs)
        self.query_one("#compare-legend", Static).update(Content(f"reading {count} run{'s' if count != 1 else ''}…"))
        self._load_runs()

    @work(thread=True, exclusive=True, group="compare-fold", exit_on_error=False)
    def _load_runs(self) -> None:
        """Fold the runs off the UI thread (the screen stays live), then draw them."""
        runs = [compare.load_compared(run_dir) for run_dir in self.run_dirs]
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show_runs, runs)

    def _show_runs(self, runs: list[compare.ComparedRun]) -> None:
        self.runs = runs
        self.query_one("#compare-legend", Static).update(self.legend())
        self._fill_table()
        self.redraw()

    def legend(self) -> Content:
        """One line per run: its letter in its colour, its name, and what differs from A."""
        base = self.runs[0].config or {}
        lines = []
        for i, run in enumerate(self.runs):
            style = PALETTE[i % len(PALETTE)]
            what = "base" if i == 0 else compare.change_label(base, run.config or {})
            spikes = len(run.state.spikes)
            marks = f" · {spikes} spike{'s' if spikes != 1 else ''} (x)" if spikes else ""
            if run.state.evals:
                marks += f" · {len(run.state.evals)} eval{'s' if len(run.state.evals) != 1 else ''} (◆)"
            letter = f"[bold ansi_{style}]━ {compare.run_letter(i)}[/]"  # ours; the name and the change are data
            lines.append(Content.from_markup(f"{letter} $name: $what$marks", name=run.name, what=what, marks=marks))
        kind = "EMA-smoothed loss" if self.smoothed else "per-step loss"
        over = "tokens seen" if self.x_axis == "tokens" else "optimizer steps"
        lines.append(Content.from_markup(f"[dim]{kind} over {over}[/dim]"))
        return Content("\n").join(lines)

    def series(self) -> list[Series]:
        """Each run's line and spike marks, on the chosen x axis."""
        result = []
        for i, run in enumerate(self.runs):
            state = run.state
            xs: list[float] = (
                [float(t) for t in state.tokens] if self.x_axis == "tokens" else list(map(float, state.steps))
            )
            ys = list(state.loss)
            if self.smoothed and ys:
                ys = ema(ys, smoothing_alpha(len(ys)))  # as the monitor smooths
            at = {step: index for index, step in enumerate(state.steps)}
            spikes = []
            for spike in state.spikes:
                index = at.get(int(spike.get("step", -1)))
                if index is not None:
                    spikes.append((xs[index], float(spike.get("loss") or math.nan)))
            evals = [(xs[at[step]], loss) for step, loss in state.eval_points() if step in at]  # step 0 too
            result.append(Series(run.name, xs, ys, PALETTE[i % len(PALETTE)], spikes, evals))
        return result

    def redraw(self) -> None:
        # Where curves share a terminal cell only one colour can show: draw the base (A) last,
        # on top, as the reference the others are read against.
        series = self.series()[::-1]
        self.query_one(CompareChart).update(series, "tokens seen" if self.x_axis == "tokens" else "step")

    def _rows(self) -> list[tuple[str, list[str]]]:
        """The table's rows: the knobs that differ, then the outcomes."""
        diff = compare.config_diff([run.config or {} for run in self.runs])
        rows = [(path, compare.format_values(values)) for path, values in diff] or [
            ("config", ["same" for _ in self.runs])
        ]
        return rows + list(compare.outcome_rows(self.runs))

    def column_titles(self, width: int) -> list[str]:
        """Each run's column title, its letter and its name, cut to share ``width`` columns with
        the row titles while keeping what tells the names apart (two reruns of one config differ
        only in their time stamps)."""
        rows = self._rows()
        what = max(len(title) for title, _ in rows)
        letters = [compare.run_letter(i) for i in range(len(self.runs))]
        # Each column is padded by a cell either side; the table's scrollbar takes two more.
        room = (width - (what + 2) - 2) // len(self.runs) - 2 - max(len(letter) for letter in letters) - 1
        names = compare.column_names([run.name for run in self.runs], max(MIN_NAME, room))
        return [f"{letter} {name}" for letter, name in zip(letters, names, strict=True)]

    def _fill_table(self) -> None:
        table = self.query_one(DataTable)
        table.clear(columns=True)
        self._table_width = self.app.size.width
        table.add_column("", key="what")
        # A str title or cell would be read as markup: a run lora[r16], a data.path chats[/v2].jsonl.
        for i, title in enumerate(self.column_titles(self._table_width)):
            table.add_column(Text(title), key=f"run{i}")
        for name, cells in self._rows():
            table.add_row(Text(name), *map(Text, cells))

    def on_resize(self, event: Resize) -> None:
        if self.runs and self._table_width not in (None, event.size.width):
            self._fill_table()

    def action_x_axis(self) -> None:
        """Plot over optimizer steps or over tokens seen."""
        if not self.runs:
            return  # still reading them
        self.x_axis = "tokens" if self.x_axis == "steps" else "steps"
        self.query_one("#compare-legend", Static).update(self.legend())
        self.redraw()

    def action_smooth(self) -> None:
        if not self.runs:
            return  # still reading them
        self.smoothed = not self.smoothed
        self.query_one("#compare-legend", Static).update(self.legend())
        self.redraw()

    def action_log_scale(self) -> None:
        chart = self.query_one(CompareChart)
        chart.log_scale = not chart.log_scale

    def action_save_svg(self) -> None:
        """Save the screen as ``loratop-exports/compare-A-vs-B.svg``, named by the runs compared
        (a new file each time: ``-2``, ``-3``... rather than over an earlier one)."""
        if not self.runs:
            return  # still reading them
        from loratop.tui.models.export import EXPORT_DIR, write_new

        stem = compare.file_stem([run.name for run in self.runs])
        try:
            path = write_new(EXPORT_DIR, stem, ".svg", self.app.export_screenshot())
        except OSError as exc:
            self.notify(f"export failed: {exc}", severity="error", markup=False)
            return
        self.notify(f"saved to {EXPORT_DIR}/:\n  {path.name}", markup=False)

    def action_back(self) -> None:
        """Back to the run history; opened first (``loratop compare``), leave."""
        if self.has_screen_below:
            self.dismiss(None)
        else:
            self.app.exit()
