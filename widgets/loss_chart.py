"""A live loss curve: raw per-step loss, its smoothed line, spike markers and eval points, over steps.

The chart wraps textual-plot's :class:`~textual_plot.PlotWidget`. It never draws more than
two points per braille sub-column pair: every line is reduced with :func:`downsample` to the
plot's width in cells first, so a million-step series costs one O(n) pass, not a million
line segments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from textual.app import ComposeResult
from textual.events import Resize
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static
from textual_plot import HiResMode, NumericAxisFormatter, PlotWidget

from loratop.widgets.downsample import downsample

__all__ = ["LossChart"]

EMPTY_TEXT = "waiting for the first step…"
ENDED_EMPTY_TEXT = "no step was trained: the run ended before its first step"
NO_FINITE_TEXT = "no finite loss to plot yet"
NO_POSITIVE_TEXT = "no positive loss to plot on a log axis"

# Before the first layout the width is unknown; a resize redraws at the real width.
_FALLBACK_BUCKETS = 200
_MIN_BUCKETS = 10

COMPACT_BELOW = 16
"""A chart shorter than this many rows leaves out its x axis title ("step"; the ticks stay),
so that its plot keeps rows for the curve (an 80×24 terminal)."""
_NICE_STEPS = (1.0, 2.0, 5.0)


class _StaticPlot(PlotWidget, can_focus=False):
    """A PlotWidget that never takes focus, so its zoom/pan keys (arrows, +, -, r) stay the app's."""


class LossChart(Widget):
    """Loss over steps: the raw loss as a faint line, the smoothed loss bright, spikes as red ``x``.

    Feed it plain data with :meth:`update`, a few times a second at most; it redraws only when
    the data (or its own width, or :attr:`log_scale`) changed. Until the first step it shows a
    centred "waiting for the first step…" instead of an empty axis.

    Args:
        name: The widget's name.
        id: The widget's DOM id.
        classes: CSS classes.
        disabled: Whether the widget is disabled.
        interactive: Let the user zoom and pan the plot with the mouse and keys (focus it first).
            Off by default: a zoomed plot stops autoscaling, which is surprising on a live chart.
    """

    DEFAULT_CSS = """
    LossChart {
        height: 1fr;
        min-height: 8;
    }
    LossChart > #loss-chart-empty {
        width: 1fr;
        height: 1fr;
        content-align: center middle;
        color: $text-muted;
    }
    LossChart > PlotWidget {
        display: none;
    }
    LossChart.-has-data > #loss-chart-empty {
        display: none;
    }
    LossChart.-has-data > PlotWidget {
        display: block;
    }
    """

    RAW_STYLE = "grey50"
    SMOOTHED_STYLE = "bold bright_cyan"
    SPIKE_STYLE = "bold red"
    SPIKE_MARKER = "x"
    EVAL_STYLE = "bold yellow"
    EVAL_MARKER = "◆"
    """Held-out loss points: a shape of their own, so they read apart from spikes in monochrome too."""

    log_scale: reactive[bool] = reactive(False)
    """Plot log10(loss) instead of loss (textual-plot has no log axis); non-positive losses are left out."""

    def __init__(
        self,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
        disabled: bool = False,
        interactive: bool = False,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._interactive = interactive
        self._steps: Sequence[float] = ()
        self._loss: Sequence[float] = ()
        self._smoothed: Sequence[float] = ()
        self._spikes: Sequence[tuple[float, float]] = ()
        self._evals: Sequence[tuple[float, float]] = ()
        self._x_range: tuple[float, float] | None = None
        self._ylim: tuple[float, float] | None = None
        """The y axis as drawn: kept while the data fits, so a live chart is not redrawn whole each step."""
        self._drawn_dots: tuple[object, ...] | None = None
        self.axes: tuple[float, float, float, float] | None = None
        """``(x_lo, x_hi, y_lo, y_hi)`` as last set on the plot."""
        self.skipped_redraws = 0
        """New data that moved no braille dot on a fixed-axis chart, so the plot was left as drawn."""
        self._drawn_key: tuple[object, ...] | None = None
        self.last_plotted_points = 0
        """Points handed to the plot by the last redraw: both lines and the spike markers."""
        self.last_buckets = 0
        """Buckets the last redraw reduced each line to (each line has at most twice as many points)."""
        self.redraw_count = 0
        """How many times the data was actually re-plotted (updates with unchanged data do not count)."""
        self.ended = False
        """The run is over (:meth:`show_ended`): an empty chart then says no step was trained."""

    def compose(self) -> ComposeResult:
        yield Static(EMPTY_TEXT, id="loss-chart-empty")
        plot_class = PlotWidget if self._interactive else _StaticPlot
        yield plot_class(id="loss-chart-plot", allow_pan_and_zoom=self._interactive)

    def on_mount(self) -> None:
        plot = self.query_one(PlotWidget)
        plot.set_xlabel("step")
        plot.set_ylabel("loss")
        _fit_margins(self)
        self._redraw()

    def on_resize(self, event: Resize) -> None:
        self._redraw()

    def watch_log_scale(self) -> None:
        self._ylim = None
        self._redraw()

    def show_ended(self) -> None:
        """The run is over: a chart still without a step says so, rather than that it waits."""
        if not self.ended:
            self.ended = True
            self._redraw()

    def update(
        self,
        steps: Sequence[float],
        loss: Sequence[float],
        smoothed: Sequence[float],
        spikes: Sequence[tuple[float, float]] = (),
        x_range: tuple[float, float] | None = None,
        evals: Sequence[tuple[float, float]] = (),
    ) -> None:
        """Show a new state of the series; cheap when nothing changed.

        The sequences are kept by reference (not copied) and read again on resize, so an
        append-only buffer may be passed every time. Non-finite losses are left out of the
        lines; show them elsewhere.

        Args:
            steps: The x value of every point (optimizer step).
            loss: The raw per-step loss, one per step.
            smoothed: The smoothed loss, one per step (NaN where undefined).
            spikes: ``(step, loss)`` of each flagged spike, drawn as markers.
            evals: ``(step, eval loss)`` of each evaluation, drawn as ``◆`` markers.
            x_range: A fixed x axis (a live run's ``(0, max_steps)``): points are then reduced
                in runs that stay put, and the y axis grows with a margin rather than refitting,
                so a new step redraws a few cells, not the whole plot (what an SSH link pays for).
        """
        if x_range != self._x_range:
            self._ylim = None
        self._steps, self._loss, self._smoothed, self._spikes = steps, loss, smoothed, spikes
        self._evals = evals
        self._x_range = x_range
        self._redraw()

    def _buckets(self) -> int:
        return _plot_cells(self)

    def _data_key(self, buckets: int, rows: int) -> tuple[object, ...]:
        """A cheap fingerprint of what would be drawn: lengths and last values, not the data."""

        def last(values: Sequence[object]) -> str:
            # repr, because NaN != NaN would make an unchanged series look changed.
            return repr(values[-1]) if len(values) else ""

        return (
            len(self._steps),
            len(self._loss),
            len(self._smoothed),
            len(self._spikes),
            len(self._evals),
            last(self._evals),
            last(self._steps),
            last(self._loss),
            last(self._smoothed),
            last(self._spikes),
            self.log_scale,
            buckets,
            rows,
            self._x_range,
            self.ended,
        )

    def _redraw(self) -> None:
        if not self.is_mounted:
            return
        buckets = self._buckets()
        rows = _fit_margins(self)
        key = self._data_key(buckets, rows)
        if key == self._drawn_key:
            return
        self._drawn_key = key

        span = int(self._x_range[1] - self._x_range[0]) if self._x_range else None
        raw_x, raw_y = downsample(self._steps, self._loss, buckets, span)
        smooth_x, smooth_y = downsample(self._steps, self._smoothed, buckets, span)
        spike_x: list[float] = []
        spike_y: list[float] = []
        for step, value in self._spikes:
            spike_x.append(step)
            spike_y.append(value)
        if len(spike_x) > buckets:
            spike_x, spike_y = downsample(spike_x, spike_y, max(1, buckets // 2))
        eval_x = [float(step) for step, _ in self._evals]
        eval_y = [float(value) for _, value in self._evals]
        if len(eval_x) > buckets:
            eval_x, eval_y = downsample(eval_x, eval_y, max(1, buckets // 2))
        if self.log_scale:
            # log10 is monotonic, so reducing first and transforming after keeps each bucket's
            # extremes; a bucket whose minimum is <= 0 just loses that point.
            raw_x, raw_y = _log10_points(raw_x, raw_y)
            smooth_x, smooth_y = _log10_points(smooth_x, smooth_y)
            spike_x, spike_y = _log10_points(spike_x, spike_y)
            eval_x, eval_y = _log10_points(eval_x, eval_y)
        else:
            raw_x, raw_y = _finite_points(raw_x, raw_y)
            smooth_x, smooth_y = _finite_points(smooth_x, smooth_y)
            spike_x, spike_y = _finite_points(spike_x, spike_y)
            eval_x, eval_y = _finite_points(eval_x, eval_y)

        self.last_buckets = buckets
        self.last_plotted_points = len(raw_x) + len(smooth_x) + len(spike_x) + len(eval_x)
        has_lines = bool(raw_x or smooth_x)
        self.set_class(has_lines, "-has-data")
        placeholder = self.query_one("#loss-chart-empty", Static)
        if not len(self._steps):
            placeholder.update(ENDED_EMPTY_TEXT if self.ended else EMPTY_TEXT)
        elif not has_lines:
            placeholder.update(NO_POSITIVE_TEXT if self.log_scale else NO_FINITE_TEXT)

        plot = self.query_one(PlotWidget)
        xs, ys = [raw_x, smooth_x, spike_x, eval_x], [raw_y, smooth_y, spike_y, eval_y]
        if self._x_range is not None and (has_lines or spike_x):
            # A live chart: redraw only when a braille dot would move. Each redraw resends the
            # whole plot to the terminal, and most steps move no dot once the axes stay put.
            self._ylim = _steady_ylim(ys, self._ylim)
            dots = _dots(xs, ys, self._x_range, self._ylim, buckets * 2, max(1, plot.size.height) * 4)
            if dots == self._drawn_dots:
                self.skipped_redraws += 1
                return
            self._drawn_dots = dots
        else:
            self._drawn_dots = None
        self.redraw_count += 1
        plot.clear()
        if has_lines or spike_x:
            if self._x_range is None:
                self.axes = _set_limits(plot, xs, ys, buckets, rows)
            else:
                self.axes = _set_steady_limits(plot, self._x_range, self._ylim or (0.0, 1.0), buckets, rows)
        plot.set_ylabel(axis_label("log10 loss" if self.log_scale else "loss", "log10 loss"))
        _add_line(plot, raw_x, raw_y, self.RAW_STYLE)
        _add_line(plot, smooth_x, smooth_y, self.SMOOTHED_STYLE)
        if spike_x:
            # hires_mode=None draws the marker character itself, one per cell, over the lines.
            plot.scatter(spike_x, spike_y, marker=self.SPIKE_MARKER, marker_style=self.SPIKE_STYLE, hires_mode=None)
        if eval_x:
            plot.scatter(eval_x, eval_y, marker=self.EVAL_MARKER, marker_style=self.EVAL_STYLE, hires_mode=None)


def axis_label(label: str, longest: str) -> str:
    """``label`` centred in the width of the ``longest`` one it replaces: textual-plot writes a
    y label over the last one without clearing it, so ``l`` twice once read ``loglossoss``."""
    return f"{label:^{max(len(label), len(longest))}}"


def _plot_cells(chart: Widget) -> int:
    """Cells across a chart's plot area: the x resolution each line is reduced to."""
    width = chart.content_size.width
    if width <= 0:
        return _FALLBACK_BUCKETS  # before the first layout; a resize redraws at the real width
    plot = chart.query_one(PlotWidget)
    # The plot area is the widget minus the y-tick margin and the two box-drawing borders.
    return max(_MIN_BUCKETS, width - plot.margin_left - 2)


def _fit_margins(chart: Widget) -> int:
    """Give a chart's plot the margins its height affords; return the plot's rows between its borders.

    textual-plot keeps two rows above the plot (the y axis title, a blank) and three under it
    (the x ticks, a blank, the x axis title): eleven rows of an 80×24 monitor's chart left
    four for the curve. One row above always, and under it only the ticks on a short chart.
    """
    plot = chart.query_one(PlotWidget)
    height = chart.content_size.height
    margins = (1, 1 if height < COMPACT_BELOW else 3)
    if (plot.margin_top, plot.margin_bottom) != margins:
        plot.margin_top, plot.margin_bottom = margins
        plot.refresh(layout=True)  # its canvases take their new sizes before it draws on them again
    return max(0, height - sum(margins) - 2)


def _y_ticks_that_fit(y_lo: float, y_hi: float, rows: int) -> list[float]:
    """Round, evenly spaced y ticks (a step of 1, 2 or 5 × 10^k), no two labels on one row.

    textual-plot's own ticks aim at about five whatever the height: on a plot four rows tall
    several land on one row and overwrite each other, leaving labels such as 7.0, 6.6, 6.2,
    6.0. Here the finest step is taken whose ticks fall a row apart (with one row between
    them from four rows up), mirroring how textual-plot puts a tick on a row.

    Args:
        y_lo: The bottom of the y axis.
        y_hi: The top of the y axis.
        rows: The plot's rows between its top and bottom borders.
    """
    if not (y_hi > y_lo) or rows < 1 or not math.isfinite(y_hi - y_lo):
        return []
    gap = 2 if rows >= 4 else 1

    def row(tick: float) -> int:
        # Row 0 is the top border, rows + 1 the bottom one, where a tick at y_lo is drawn.
        return math.ceil(rows * (y_hi - tick) / (y_hi - y_lo)) + (1 if tick == y_lo else 0)

    power = math.floor(math.log10(y_hi - y_lo)) - 2
    coarsest: list[float] = []
    for exponent in range(power, power + 5):
        for mantissa in _NICE_STEPS:
            step = mantissa * 10.0**exponent
            first, last = math.ceil(y_lo / step - 1e-9), math.floor(y_hi / step + 1e-9)
            ticks = [t for t in (round(k * step, 12) for k in range(first, last + 1)) if y_lo <= t <= y_hi]
            if len(ticks) < 2:
                return coarsest or ticks
            if len(ticks) > 8:
                continue
            coarsest = ticks
            at = [row(t) for t in ticks]
            if all(abs(a - b) >= gap for a, b in zip(at, at[1:], strict=False)):
                return ticks
    return coarsest


def _set_limits(
    plot: PlotWidget, xs: list[list[float]], ys: list[list[float]], cells: int, rows: int
) -> tuple[float, float, float, float]:
    """Fit the axes to the data with a margin.

    textual-plot draws the axis box over the data, and its autoscale puts the extremes exactly
    on the box's top and right edges, where a spike's marker would vanish under the border.
    A one-step series also needs a non-zero range to get readable ticks.
    """
    x_lo = min(min(x) for x in xs if x)
    x_hi = max(max(x) for x in xs if x)
    y_lo = min(min(y) for y in ys if y)
    y_hi = max(max(y) for y in ys if y)
    x_span = x_hi - x_lo
    if x_span > 0:
        x_hi += x_span / cells
    else:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_span = y_hi - y_lo
    y_pad = 0.04 * y_span if y_span > 0 else 0.05 * max(abs(y_hi), 1.0)
    plot.set_xlimits(x_lo, x_hi)
    plot.set_ylimits(y_lo - y_pad, y_hi + y_pad)
    plot.set_xticks(_x_ticks_that_fit(x_lo, x_hi, cells))
    plot.set_yticks(_y_ticks_that_fit(y_lo - y_pad, y_hi + y_pad, rows))
    return x_lo, x_hi, y_lo - y_pad, y_hi + y_pad


def _steady_ylim(ys: list[list[float]], ylim: tuple[float, float] | None) -> tuple[float, float]:
    """A y axis that moves only when the data leaves it (then with room to spare) or fills
    less than a third of it."""
    y_lo = min(min(y) for y in ys if y)
    y_hi = max(max(y) for y in ys if y)
    if ylim is None or y_lo < ylim[0] or y_hi > ylim[1] or (y_hi - y_lo) < (ylim[1] - ylim[0]) / 3:
        pad = 0.15 * (y_hi - y_lo) if y_hi > y_lo else 0.05 * max(abs(y_hi), 1.0)
        ylim = (y_lo - pad, y_hi + pad)
    return ylim


def _steady_x_hi(x_range: tuple[float, float], cells: int) -> float:
    return x_range[1] + max(1.0, (x_range[1] - x_range[0]) / cells)  # the last point clear of the border


def _set_steady_limits(
    plot: PlotWidget, x_range: tuple[float, float], ylim: tuple[float, float], cells: int, rows: int
) -> tuple[float, float, float, float]:
    x_lo, x_hi = x_range[0], _steady_x_hi(x_range, cells)
    plot.set_xlimits(x_lo, x_hi)
    plot.set_ylimits(*ylim)
    plot.set_xticks(_x_ticks_that_fit(x_lo, x_hi, cells))
    plot.set_yticks(_y_ticks_that_fit(*ylim, rows))
    return x_lo, x_hi, *ylim


def _dots(
    xs: list[list[float]], ys: list[list[float]], x_range: tuple[float, float], ylim: tuple[float, float],
    across: int, down: int,
) -> tuple[object, ...]:  # fmt: skip
    """Where each point falls on a braille grid of ``across`` x ``down`` dots, with the axes:
    two charts with the same key look the same."""
    x_lo, x_hi = x_range[0], _steady_x_hi(x_range, across // 2)
    x_scale = across / (x_hi - x_lo) if x_hi > x_lo else 0.0
    y_scale = down / (ylim[1] - ylim[0]) if ylim[1] > ylim[0] else 0.0
    lines = tuple(
        tuple((int((x - x_lo) * x_scale), int((y - ylim[0]) * y_scale)) for x, y in zip(line_x, line_y, strict=True))
        for line_x, line_y in zip(xs, ys, strict=True)
    )
    return (x_range, ylim, across, down, lines)


def _x_ticks_that_fit(x_lo: float, x_hi: float, cells: int) -> list[float]:
    """textual-plot's nice x ticks, less any whose centred label would be cut off at the right edge."""
    ticks, labels = NumericAxisFormatter().get_ticks_and_labels(x_lo, x_hi)
    kept = []
    for tick, label in zip(ticks, labels, strict=True):
        # Mirrors textual-plot: the tick's cell (after the 1-cell border), then its centring.
        column = math.floor(1 + (tick - x_lo) / (x_hi - x_lo) * cells)
        half, odd = divmod(len(label), 2)
        start = column - half + (0 if odd else 1)
        if tick == x_hi or start + len(label) <= cells + 2:  # a tick at x_hi is right-aligned
            kept.append(tick)
    return kept


def _add_line(plot: PlotWidget, xs: list[float], ys: list[float], style: str) -> None:
    """A braille line; a lone point as a braille dot (a one-point line draws nothing)."""
    if len(xs) == 1:
        plot.scatter(xs, ys, marker_style=style, hires_mode=HiResMode.BRAILLE)
    elif xs:
        plot.plot(xs, ys, line_style=style, hires_mode=HiResMode.BRAILLE)


def _log10_points(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The points with a positive finite y, as ``(x, log10 y)``."""
    out_x: list[float] = []
    out_y: list[float] = []
    for x, y in zip(xs, ys, strict=True):
        if y > 0 and math.isfinite(y) and math.isfinite(x):
            out_x.append(x)
            out_y.append(math.log10(y))
    return out_x, out_y


MAX_DRAWN = 1e150
"""Larger losses (a diverged or forged run's 1e308) are left off the linear axis like
infinities: the span between ±1e308 overflows a float, and no axis shows them beside the
rest. The header still says the number; the log axis still draws them."""


def _finite_points(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The points whose x and y are both finite (and y within ±:data:`MAX_DRAWN`)."""
    out_x: list[float] = []
    out_y: list[float] = []
    for x, y in zip(xs, ys, strict=True):
        if math.isfinite(x) and -MAX_DRAWN <= y <= MAX_DRAWN:  # NaN fails the comparison
            out_x.append(x)
            out_y.append(y)
    return out_x, out_y
