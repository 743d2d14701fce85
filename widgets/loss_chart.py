"""A live loss curve: raw per-step loss, its smoothed line, spike markers and eval points, over steps.

The chart wraps textual-plot's :class:`~textual_plot.PlotWidget`. It never draws more than
two points per braille sub-column pair: every line is reduced with :func:`downsample` to the
plot's width in cells first, so a million-step series costs one O(n) pass, not a million
line segments.

A cursor (:meth:`LossChart.move_cursor`) reads one step's loss and lr on the chart's top line;
it is drawn over the plot, so moving it never resends the plot. A zoom (:meth:`LossChart.zoom_in`)
redraws the plot once, on the steps in its window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.cells import cell_len
from rich.text import Text
from textual.app import ComposeResult
from textual.events import Resize
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static
from textual_plot import HiResMode, NumericAxisFormatter, PlotWidget

from loratop.widgets.chart_view import ChartView
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
    LossChart > .-overlay {
        position: absolute;
        display: none;
        height: 1;
        width: auto;
    }
    LossChart.-has-data > .-overlay.-shown {
        display: block;
    }
    LossChart > #loss-chart-readout {
        color: $text;
        background: $panel;
    }
    """

    RAW_STYLE = "grey50"
    SMOOTHED_STYLE = "bold bright_cyan"
    SPIKE_STYLE = "bold red"
    SPIKE_MARKER = "x"
    EVAL_STYLE = "bold yellow"
    EVAL_MARKER = "◆"
    """Held-out loss points: a shape of their own, so they read apart from spikes in monochrome too."""
    CURSOR_STYLE = "magenta"
    CURSOR_LINE = "│"
    CURSOR_MARKER = "●"
    """The cursor: a line down the plot at its step, this marker on that step's raw loss."""

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
        self._lr: Sequence[float] = ()
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
        self.view = ChartView()
        """The cursor and the zoom (:meth:`move_cursor`, :meth:`zoom_in`, :meth:`reset_view`)."""
        self._overlays: tuple[object, ...] = ()

    def compose(self) -> ComposeResult:
        yield Static(EMPTY_TEXT, id="loss-chart-empty")
        plot_class = PlotWidget if self._interactive else _StaticPlot
        yield plot_class(id="loss-chart-plot", allow_pan_and_zoom=self._interactive)
        # Drawn over the plot, so a cursor move repaints a column and a line, never the plot.
        yield Static(id="loss-chart-cursor", classes="-overlay")
        yield Static(id="loss-chart-readout", classes="-overlay", markup=False)

    def on_mount(self) -> None:
        plot = self.query_one(PlotWidget)
        plot.set_xlabel("step")
        plot.set_ylabel("loss")
        _fit_margins(self)
        self._redraw()

    def on_resize(self, event: Resize) -> None:
        self._redraw()
        self.call_after_refresh(self._place_overlays)

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
        lr: Sequence[float] = (),
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
            lr: The learning rate, one per step: the cursor's readout says it.
            x_range: A fixed x axis (a live run's ``(0, max_steps)``): points are then reduced
                in runs that stay put, and the y axis grows with a margin rather than refitting,
                so a new step redraws a few cells, not the whole plot (what an SSH link pays for).
        """
        if x_range != self._x_range:
            self._ylim = None
        self.view.follow(len(self._steps), len(steps))
        self._steps, self._loss, self._smoothed, self._spikes = steps, loss, smoothed, spikes
        self._evals, self._lr = evals, lr
        self._x_range = x_range
        self._redraw()
        self._place_overlays()

    # -- cursor and zoom ---------------------------------------------------------

    def move_cursor(self, by: int) -> None:
        """Move the cursor ``by`` cells (at least a step each; the first move shows it on the
        latest step) and say that step's loss and lr. Only the cursor's column and the readout
        are redrawn, unless the cursor leaves a zoomed window, which then slides along."""
        if self.view.move(self._steps, by, self._buckets()):
            self._zoomed()
        self._place_overlays()

    def zoom_in(self) -> bool:
        """Show four times fewer steps, around the cursor (without one: the latest steps).

        Returns:
            Whether it zoomed: ``False`` with no steps, or at the narrowest zoom already.
        """
        if not self.view.zoom_in(self._steps, self._whole_x()):
            return False
        self._zoomed()
        return True

    def reset_view(self) -> None:
        """The whole run again, without a cursor."""
        zoomed = self.view.window is not None
        self.view.reset()
        if zoomed:
            self._zoomed()
        self._place_overlays()

    @property
    def readout(self) -> str:
        """What the chart's top line says of the cursor and zoom (empty with neither)."""
        return self.view.readout(self._steps, self._loss, self._lr, self._smoothed, self._readout_width())

    def _whole_x(self) -> tuple[float, float]:
        """The x axis unzoomed: the live run's planned steps, else from 0 to the last step."""
        if self._x_range is not None:
            return self._x_range
        last = float(self._steps[-1]) if len(self._steps) else 1.0
        return min(0.0, float(self._steps[0]) if len(self._steps) else 0.0), last

    def _zoomed(self) -> None:
        self._ylim = None  # the y axis fits the steps in view
        self._redraw()
        self.call_after_refresh(self._place_overlays)

    def _readout_width(self) -> int:
        if not self.is_mounted:
            return 80
        return max(0, self.content_size.width - self.query_one(PlotWidget).margin_left - 4)

    def _place_overlays(self) -> None:
        """Put the cursor's column and the readout where the plot as drawn has them; a no-op
        when neither moved (a live update leaves a cursor that does not follow alone)."""
        if not self.is_mounted:
            return
        cursor = self.query_one("#loss-chart-cursor", Static)
        readout = self.query_one("#loss-chart-readout", Static)
        text = self.readout
        column = self._cursor_column()
        key = (text, column[0] if column else None, column[1].plain if column else None, self.size)
        if key == self._overlays:
            return
        self._overlays = key
        readout.set_class(bool(text), "-shown")
        if text:
            readout.update(text)
            left = self.query_one(PlotWidget).margin_left + 4
            readout.styles.offset = (max(left, self.content_size.width - cell_len(text) - 1), 0)
        cursor.set_class(column is not None, "-shown")
        if column is not None:
            (x, y, height), line = column
            cursor.styles.height = height
            cursor.styles.offset = (x, y)
            cursor.update(line)

    def _cursor_column(self) -> tuple[tuple[int, int, int], Text] | None:
        """``((x, y, height), text)`` of the cursor's line down the plot, in this widget's cells;
        ``None`` without a cursor, or when its step is off the x axis."""
        i = self.view.cursor
        if i is None or i >= len(self._steps) or self.axes is None:
            return None
        canvas = self.query_one(PlotWidget).query_one("#plot")
        width, height = canvas.size.width - 2, canvas.size.height - 2  # inside the box's borders
        x_lo, x_hi, y_lo, y_hi = self.axes
        step = float(self._steps[i])
        if width < 1 or height < 1 or not x_lo <= step <= x_hi or not x_hi > x_lo:
            return None
        # As textual-plot maps a coordinate to a cell (after the 1-cell border).
        x = min(width, math.floor(1 + (step - x_lo) / (x_hi - x_lo) * width))
        rows = [self.CURSOR_LINE] * height
        value = float(self._loss[i]) if i < len(self._loss) else math.nan
        if self.log_scale:
            value = math.log10(value) if value > 0 and math.isfinite(value) else math.nan
        if math.isfinite(value) and y_hi > y_lo and y_lo <= value <= y_hi:
            rows[min(height - 1, math.floor(height * (y_hi - value) / (y_hi - y_lo)))] = self.CURSOR_MARKER
        line = Text("\n".join(rows), style=self.CURSOR_STYLE)
        origin = self.content_region.offset
        at = canvas.content_region.offset
        return (at.x - origin.x + x, at.y - origin.y + 1, height), line

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
            self.view.window,
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

        window = self.view.window
        x_range = window or self._x_range  # a zoom is drawn as a live chart's fixed axis is
        span = int(x_range[1] - x_range[0]) if x_range else None
        steps, loss, smoothed = self._steps, self._loss, self._smoothed
        if window is not None:
            start, end = self.view.visible(steps)
            steps, loss, smoothed = steps[start:end], loss[start:end], smoothed[start:end]
        raw_x, raw_y = downsample(steps, loss, buckets, span)
        smooth_x, smooth_y = downsample(steps, smoothed, buckets, span)
        spike_x: list[float] = []
        spike_y: list[float] = []
        for step, value in self._spikes:
            if window is None or window[0] <= step <= window[1]:
                spike_x.append(step)
                spike_y.append(value)
        if len(spike_x) > buckets:
            spike_x, spike_y = downsample(spike_x, spike_y, max(1, buckets // 2))
        evals = [(s, v) for s, v in self._evals if window is None or window[0] <= s <= window[1]]
        eval_x = [float(step) for step, _ in evals]
        eval_y = [float(value) for _, value in evals]
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
        if window is not None and not has_lines:
            # A zoom on steps without a finite loss keeps its axes: the readout says where it is.
            self.set_class(True, "-has-data")
        if not len(self._steps):
            placeholder.update(ENDED_EMPTY_TEXT if self.ended else EMPTY_TEXT)
        elif not has_lines:
            placeholder.update(NO_POSITIVE_TEXT if self.log_scale else NO_FINITE_TEXT)

        plot = self.query_one(PlotWidget)
        xs, ys = [raw_x, smooth_x, spike_x, eval_x], [raw_y, smooth_y, spike_y, eval_y]
        if x_range is not None and (has_lines or spike_x):
            # A live chart: redraw only when a braille dot would move. Each redraw resends the
            # whole plot to the terminal, and most steps move no dot once the axes stay put.
            self._ylim = _steady_ylim(ys, self._ylim)
            dots = _dots(xs, ys, x_range, self._ylim, buckets * 2, max(1, plot.size.height) * 4)
            if dots == self._drawn_dots:
                self.skipped_redraws += 1
                return
            self._drawn_dots = dots
        else:
            self._drawn_dots = None
        self.redraw_count += 1
        plot.clear()
        if has_lines or spike_x:
            if x_range is None:
                self.axes = _set_limits(plot, xs, ys, buckets, rows, x_origin=0.0)
            else:
                self.axes = _set_steady_limits(plot, x_range, self._ylim or (0.0, 1.0), buckets, rows)
        elif window is not None:
            self.axes = _set_steady_limits(plot, window, self._ylim or (0.0, 1.0), buckets, rows)
        plot.set_ylabel(axis_label("log10 loss" if self.log_scale else "loss", "log10 loss"))
        _add_line(plot, raw_x, raw_y, self.RAW_STYLE)
        _add_line(plot, smooth_x, smooth_y, self.SMOOTHED_STYLE)
        if spike_x:
            # hires_mode=None draws the marker character itself, one per cell, over the lines.
            plot.scatter(spike_x, spike_y, marker=self.SPIKE_MARKER, marker_style=self.SPIKE_STYLE, hires_mode=None)
        if eval_x:
            plot.scatter(eval_x, eval_y, marker=self.EVAL_MARKER, marker_style=self.EVAL_STYLE, hires_mode=None)
        if self.view.cursor is not None or window is not None:
            self.call_after_refresh(self._place_overlays)  # the axes moved under them


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
    plot: PlotWidget,
    xs: list[list[float]],
    ys: list[list[float]],
    cells: int,
    rows: int,
    x_origin: float | None = None,
) -> tuple[float, float, float, float]:
    """Fit the axes to the data with a margin.

    textual-plot draws the axis box over the data, and its autoscale puts the extremes exactly
    on the box's top and right edges, where a spike's marker would vanish under the border.
    A one-step series also needs a non-zero range to get readable ticks.

    Args:
        x_origin: Start the x axis here (or at the data, if that lies before): a finished run's
            chart keeps the ``0`` tick its live chart had (steps count from 1).
    """
    x_lo = min(min(x) for x in xs if x)
    x_hi = max(max(x) for x in xs if x)
    if x_origin is not None:
        x_lo = min(x_lo, x_origin)
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
