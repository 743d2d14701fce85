"""Pure series reduction for charts: min/max downsampling and an exponential moving average.

Both take plain sequences (lists, tuples, ``array.array``) and return lists, so a widget can
keep a million-point series in a compact array and still draw only what fits on screen.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

__all__ = ["downsample", "ema"]


def downsample(
    xs: Sequence[float], ys: Sequence[float], buckets: int, span: int | None = None
) -> tuple[list[float], list[float]]:
    """Reduce a series to at most ``2 * buckets`` points, keeping every spike.

    The series is split into ``buckets`` runs of consecutive indices; each run keeps the
    point with its lowest and the point with its highest y, in x order. A one-sample spike
    therefore survives any amount of reduction, which an average or a stride would lose.
    A series with at most ``2 * buckets`` points is returned whole.

    Points whose x or y is not finite (NaN, ±inf) never appear in the result; the caller
    reports them separately. If the sequences differ in length, the longer one's tail is
    ignored (an appender may be one value ahead).

    Args:
        xs: The x value of each point, in drawing order (steps, for a loss curve).
        ys: The y value of each point.
        buckets: How many index runs to reduce to; for a braille chart, its width in cells.
        span: Cut the runs as if the series had this many points (a live series' planned
            length): the runs then stay where they are as points are appended, so an older
            part of the chart does not change (nor get sent to the terminal again) each step.

    Returns:
        The kept points as two lists, ``(xs, ys)``.

    Raises:
        ValueError: If ``buckets`` is less than 1.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    isfinite = math.isfinite
    n = min(len(xs), len(ys))
    total = max(n, span or 0)
    if total <= 2 * buckets:
        out_x: list[float] = []
        out_y: list[float] = []
        for i in range(n):
            x, y = xs[i], ys[i]
            if isfinite(y) and isfinite(x):
                out_x.append(x)
                out_y.append(y)
        return out_x, out_y

    out_x = []
    out_y = []
    start = 0
    for bucket in range(1, buckets + 1):
        if start >= n:
            break
        end = min(n, bucket * total // buckets)
        segment = ys[start:end]
        if not hasattr(segment, "index"):  # e.g. a memoryview slice
            segment = list(segment)
        # One C-level pass tells whether the bucket is all finite; builtin min/max/index then
        # do the work at C speed. A NaN or inf (or an overflowing sum) takes the slow path.
        if isfinite(sum(segment)):
            low = segment.index(min(segment))
            high = segment.index(max(segment))
        else:
            low = high = -1
            for offset, y in enumerate(segment):
                if isfinite(y):
                    if low < 0 or y < segment[low]:
                        low = offset
                    if high < 0 or y > segment[high]:
                        high = offset
            if low < 0:  # nothing finite in this bucket
                start = end
                continue
        first, second = (low, high) if low <= high else (high, low)
        x = xs[start + first]
        if isfinite(x):
            out_x.append(x)
            out_y.append(segment[first])
        if second != first:
            x = xs[start + second]
            if isfinite(x):
                out_x.append(x)
                out_y.append(segment[second])
        start = end
    return out_x, out_y


def smoothing_alpha(n_steps: int) -> float:
    """EMA weight for a smoothed loss: a window of ~2% of the run (at least 3 steps).

    A fixed weight lags a short run by many steps and barely smooths a long one.
    ``n_steps`` is the run's planned length, so the weight is fixed for the whole run
    and a live smoothed line is extended incrementally rather than recomputed.
    """
    window = max(3, n_steps // 50)
    return 2 / (window + 1)


def ema(values: Sequence[float], alpha: float) -> list[float]:
    """Exponential moving average that steps over NaN and inf.

    ``s[i] = alpha * v[i] + (1 - alpha) * s[i - 1]``, starting at the first finite value.
    A non-finite value carries the previous smoothed value forward, so one NaN loss does not
    poison the rest of the curve; before the first finite value the result is NaN.

    Args:
        values: The raw series.
        alpha: Weight of the newest value, in ``(0, 1]``; 1 returns the (NaN-carried) input.

    Returns:
        One smoothed value per input value.

    Raises:
        ValueError: If ``alpha`` is outside ``(0, 1]``.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    isfinite = math.isfinite
    keep = 1.0 - alpha
    out: list[float] = []
    append = out.append
    smoothed = math.nan
    started = False
    for value in values:
        if isfinite(value):
            if started:
                smoothed = alpha * value + keep * smoothed
            else:
                smoothed = float(value)
                started = True
        append(smoothed)
    return out


class RunningEma:
    """:func:`ema` kept up to date as a series grows: each call costs only the new points.

    Args:
        alpha: Weight of the newest value, in ``(0, 1]``.
    """

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.values: array[float] = array("d")
        """The smoothed series so far, one value per input value."""

    def extend(self, series: Sequence[float]) -> array[float]:
        """Smooth the points of ``series`` not seen yet; ``series`` must only ever grow."""
        start = len(self.values)
        if start < len(series):
            last = self.values[-1] if start else math.nan
            tail = ema([last, *series[start:]], self.alpha)[1:] if start else ema(series, self.alpha)
            self.values.extend(tail)
        return self.values
