"""Where a chart's cursor and zoom stand, over a series of increasing steps: pure, no Textual.

A chart keeps one :class:`ChartView`: the cursor is an index into its series (so it stays on a
point as a live series grows), the zoom a window of steps. Moving and zooming change only this
state; the chart then redraws what it must (a zoom: the plot; a cursor move: two small overlays).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MIN_ZOOM_STEPS", "ZOOM_FACTOR", "ChartView", "fmt_value"]

ZOOM_FACTOR = 4.0
"""Each zoom shows this many times fewer steps."""
MIN_ZOOM_STEPS = 10.0
"""The narrowest window a zoom goes to, in steps."""


@dataclass
class ChartView:
    """A chart's cursor and zoom window.

    Attributes:
        cursor: Index of the point under the cursor, ``None`` when no cursor is shown.
        window: ``(first step, last step)`` shown while zoomed, ``None`` for the whole run.
    """

    cursor: int | None = None
    window: tuple[float, float] | None = None

    def visible(self, steps: Sequence[float]) -> tuple[int, int]:
        """The index range ``[start, end)`` of the points inside the window (all without one)."""
        if self.window is None:
            return 0, len(steps)
        return bisect_left(steps, self.window[0]), bisect_right(steps, self.window[1])

    def move(self, steps: Sequence[float], by: int, cells: int) -> bool:
        """Move the cursor ``by`` cells' worth of points (at least one point each).

        The first move puts the cursor on the latest point in view. Past the window's edge
        the window slides along (the zoom's width kept).

        Args:
            steps: The series' steps, increasing.
            by: Cells to move: negative goes back.
            cells: The plot's width in cells: one cell holds this share of the visible points.

        Returns:
            Whether the window moved (the plot must be redrawn).
        """
        n = len(steps)
        if not n:
            return False
        start, end = self.visible(steps)
        if self.cursor is None or self.cursor >= n:
            self.cursor = end - 1 if end > start else n - 1
            return False
        stride = max(1, round((end - start) / max(1, cells)))
        self.cursor = min(n - 1, max(0, self.cursor + by * stride))
        if self.window is None:
            return False
        lo, hi = self.window
        width, step = hi - lo, float(steps[self.cursor])
        # Half a window at a time (as far as the data goes), so walking on redraws it seldom.
        if step < lo:
            lo = min(step, max(lo - width / 2, float(steps[0])))
        elif step > hi:
            lo = max(step, min(hi + width / 2, float(steps[-1]))) - width
        else:
            return False
        self.window = (lo, lo + width)
        return True

    def zoom_in(self, steps: Sequence[float], whole: tuple[float, float]) -> bool:
        """Show :data:`ZOOM_FACTOR` times fewer steps: around the cursor, else the latest ones.

        Args:
            steps: The series' steps, increasing.
            whole: The x axis unzoomed, ``(first, last)``: the window stays inside it.

        Returns:
            Whether it zoomed (``False``: no data, or already :data:`MIN_ZOOM_STEPS` wide).
        """
        if not len(steps):
            return False
        lo, hi = self.window or whole
        width = max(MIN_ZOOM_STEPS, (hi - lo) / ZOOM_FACTOR)
        if width >= hi - lo:
            return False
        if self.cursor is not None and self.cursor < len(steps):
            start = steps[self.cursor] - width / 2
        else:
            start = min(float(steps[-1]), hi) - width
        start = max(whole[0], min(start, whole[1] - width))
        self.window = (start, start + width)
        return True

    def reset(self) -> None:
        """The whole run again, without a cursor."""
        self.cursor = None
        self.window = None

    def follow(self, before: int, now: int) -> None:
        """A live series grew from ``before`` to ``now`` points: a cursor on the latest point stays on the latest."""
        if self.cursor is not None and self.cursor == before - 1 and now > before:
            self.cursor = now - 1

    def readout(
        self,
        steps: Sequence[float],
        loss: Sequence[float],
        lr: Sequence[float],
        smoothed: Sequence[float],
        width: int,
    ) -> str:
        """What the chart says about its cursor and zoom, in at most ``width`` cells when it can:
        ``step 67 · loss 6.4321 · smoothed 6.3012 · lr 3.00e-02 · zoom 40–80``; the smoothed
        value and then the zoom's words go first when room is short. Empty with neither."""
        zoom = f"zoom {self.window[0]:.0f}–{self.window[1]:.0f}" if self.window is not None else ""
        i = self.cursor
        if i is None or i >= len(steps):
            return f"zoomed to steps {zoom[5:]}" if zoom and len(zoom) + 11 <= width else zoom
        parts = [f"step {steps[i]:.0f}", f"loss {fmt_value(_at(loss, i))}"]
        value = _at(lr, i)
        lr_part = f"lr {value:.2e}" if math.isfinite(value) else "lr –"
        ema = _at(smoothed, i)
        candidates = [
            [*parts, f"smoothed {fmt_value(ema)}" if math.isfinite(ema) else "", lr_part, zoom],
            [*parts, lr_part, zoom],
            [*parts, lr_part, zoom.replace("zoom ", "")],
            [*parts, lr_part],
        ]
        texts = [" · ".join(p for p in c if p) for c in candidates]
        return next((t for t in texts if len(t) <= width), texts[-1])


def _at(values: Sequence[float], i: int) -> float:
    return float(values[i]) if i < len(values) else math.nan


def fmt_value(value: float) -> str:
    """Four decimals; ``NaN`` and ``inf`` spelled out (as the header writes a loss)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4f}"
