"""Several runs' loss curves overlaid on one axis, each in its own colour, spikes marked.

Like :class:`~widgets.loss_chart.LossChart`, every line is reduced to the plot's width in
cells before it is drawn, so long runs cost one O(n) pass per redraw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from textual.app import ComposeResult
from textual.events import Resize
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static
from textual_plot import PlotWidget

from loratop.widgets.downsample import downsample
from loratop.widgets.loss_chart import (
    _add_line,
    _finite_points,
    _fit_margins,
    _log10_points,
    _plot_cells,
    _set_limits,
    _StaticPlot,
    axis_label,
)

__all__ = ["PALETTE", "CompareChart", "Series"]

PALETTE = ("bright_cyan", "bright_magenta", "bright_yellow", "bright_green", "bright_red", "bright_blue")
"""Run colours, in legend order (A, B, C, ...)."""


@dataclass
class Series:
    """One run's line."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: str
    spikes: Sequence[tuple[float, float]] = field(default_factory=tuple)
    """``(x, y)`` of each flagged spike, drawn as an ``x`` in the run's colour."""
    evals: Sequence[tuple[float, float]] = field(default_factory=tuple)
    """``(x, eval loss)`` of each evaluation, drawn as a ``◆`` in the run's colour: the held-out curve."""


class CompareChart(Widget):
    """Overlaid loss curves; feed it with :meth:`update`."""

    DEFAULT_CSS = """
    CompareChart {
        height: 1fr;
        min-height: 8;
    }
    CompareChart > #compare-chart-empty {
        width: 1fr;
        height: 1fr;
        content-align: center middle;
        color: $text-muted;
    }
    CompareChart > PlotWidget { display: none; }
    CompareChart.-has-data > #compare-chart-empty { display: none; }
    CompareChart.-has-data > PlotWidget { display: block; }
    """

    log_scale: reactive[bool] = reactive(False)
    """Plot log10(loss); non-positive losses are left out."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._series: list[Series] = []
        self._x_label = "step"
        self._y_label = "loss"
        self.plotted: list[int] = []
        """Points drawn per series by the last redraw (lines and spike markers)."""

    def compose(self) -> ComposeResult:
        yield Static("no steps in these runs yet", id="compare-chart-empty")
        yield _StaticPlot(id="compare-chart-plot", allow_pan_and_zoom=False)

    def on_mount(self) -> None:
        self._redraw()

    def on_resize(self, event: Resize) -> None:
        self._redraw()

    def watch_log_scale(self) -> None:
        self._redraw()

    def update(self, series: list[Series], x_label: str = "step", y_label: str = "loss") -> None:
        """Draw these series (kept by reference; redrawn on resize)."""
        self._series, self._x_label, self._y_label = series, x_label, y_label
        self._redraw()

    def _redraw(self) -> None:
        if not self.is_mounted:
            return
        buckets = _plot_cells(self)
        rows = _fit_margins(self)
        lines: list[tuple[list[float], list[float], str]] = []
        marks: list[tuple[list[float], list[float], str]] = []
        diamonds: list[tuple[list[float], list[float], str]] = []
        for s in self._series:
            ex = [float(x) for x, _ in s.evals]
            ey = [float(y) for _, y in s.evals]
            ex, ey = _log10_points(ex, ey) if self.log_scale else _finite_points(ex, ey)
            diamonds.append((ex, ey, s.style))
            xs, ys = downsample(s.x, s.y, buckets)
            sx = [float(x) for x, _ in s.spikes]
            sy = [float(y) for _, y in s.spikes]
            if self.log_scale:
                xs, ys = _log10_points(xs, ys)
                sx, sy = _log10_points(sx, sy)
            else:
                xs, ys = _finite_points(xs, ys)
                sx, sy = _finite_points(sx, sy)
            lines.append((xs, ys, s.style))
            marks.append((sx, sy, s.style))
        self.plotted = [len(x) + len(m[0]) + len(d[0]) for (x, _, _), m, d in zip(lines, marks, diamonds, strict=True)]
        has_data = any(x for x, _, _ in lines)
        self.set_class(has_data, "-has-data")
        plot = self.query_one(PlotWidget)
        plot.clear()
        if not has_data:
            return
        everything = lines + marks + diamonds
        _set_limits(plot, [x for x, _, _ in everything], [y for _, y, _ in everything], buckets, rows)
        plot.set_xlabel(self._x_label)
        longest = f"log10 {self._y_label}"
        plot.set_ylabel(axis_label(longest if self.log_scale else self._y_label, longest))
        for xs, ys, style in lines:
            _add_line(plot, xs, ys, style)
        for xs, ys, style in marks:
            if xs:
                plot.scatter(xs, ys, marker="x", marker_style=f"bold {style}", hires_mode=None)
        for xs, ys, style in diamonds:
            if xs:
                plot.scatter(xs, ys, marker="◆", marker_style=f"bold {style}", hires_mode=None)
