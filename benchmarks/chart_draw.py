"""How LossChart's cost grows with the series length: downsample vs. one update + redraw.

Runs a headless app at 80x24 and at 160x48, feeds the chart 10k, 100k and 1M steps (raw loss
with spikes, its EMA, a few spike markers) and prints, per size and length:

- ``downsample``: one :func:`widgets.downsample.downsample` of the raw loss to the chart's width;
- ``update``: ``LossChart.update`` itself (two downsamples + handing the points to the plot);
- ``update+draw``: ``update`` then ``Pilot.pause()``, which lets textual-plot render the canvas
  and the screen repaint;
- ``idle pause``: a ``Pilot.pause()`` with nothing to redraw, the floor of the column above.

The 1M/10k ratios show that only the O(n) reduction grows with the series; drawing is bound by
the widget's width. Best of 3 each. Run: ``python benchmarks/chart_draw.py`` (about 15 s).
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import time
from collections.abc import Awaitable, Callable

from textual.app import App, ComposeResult
from textual.pilot import Pilot

from loratop.widgets import LossChart
from loratop.widgets.downsample import downsample, ema

LENGTHS = (10_000, 100_000, 1_000_000)
SIZES = ((80, 24), (160, 48))
REPEATS = 3

Series = tuple[list[float], list[float], list[float], list[tuple[float, float]]]
"""Steps, raw loss, smoothed loss, spikes."""
Row = tuple[int, float, float, float, float, int]
"""Length, downsample s, update s, update+draw s, idle pause s, buckets."""


class ChartApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LossChart()


def make_series(n: int) -> Series:
    rng = random.Random(n)
    steps = [float(i) for i in range(n)]
    loss = [2.0 * math.exp(-i / (n / 3)) + 0.3 + 0.05 * rng.random() for i in range(n)]
    spikes = []
    for at in (n // 7, n // 3, (2 * n) // 3):
        loss[at] = 12.0
        spikes.append((float(at), 12.0))
    loss[n // 2] = math.nan
    return steps, loss, ema(loss, 0.01), spikes


def best_of(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


async def best_of_async(fn: Callable[[], Awaitable[object]]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return min(times)


async def measure_one(pilot: Pilot[None], chart: LossChart, n: int, series: Series) -> Row:
    steps, loss, smoothed, spikes = series
    chart.update(steps, loss, smoothed, spikes)  # warm-up; also fixes the bucket count
    await pilot.pause()
    buckets = chart.last_buckets
    tick = 0

    def update_only() -> None:
        nonlocal tick
        # A new last value makes the data "changed", so every repeat really redraws.
        tick += 1
        loss[-1] = 0.5 + tick * 1e-9
        chart.update(steps, loss, smoothed, spikes)

    async def update_and_draw() -> None:
        update_only()
        await pilot.pause()

    t_downsample = best_of(lambda: downsample(steps, loss, buckets))
    t_update = best_of(update_only)
    await pilot.pause()
    t_draw = await best_of_async(update_and_draw)
    t_idle = await best_of_async(pilot.pause)
    return n, t_downsample, t_update, t_draw, t_idle, buckets


async def measure(size: tuple[int, int], series: dict[int, Series]) -> list[Row]:
    app = ChartApp()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        chart = app.query_one(LossChart)
        return [await measure_one(pilot, chart, n, series[n]) for n in LENGTHS]


def main() -> None:
    started = time.perf_counter()
    series = {n: make_series(n) for n in LENGTHS}
    # Keep the cyclic GC from rescanning the million-element lists in the middle of a timing.
    gc.collect()
    gc.freeze()
    for size in SIZES:
        rows = asyncio.run(measure(size, series))
        buckets = rows[0][5]
        print(f"\nLossChart at {size[0]}x{size[1]} (plot {buckets} cells wide, <= {4 * buckets} line points)")
        print(f"{'points':>10} {'downsample':>12} {'update':>10} {'update+draw':>12} {'idle pause':>11}")
        for n, t_down, t_update, t_draw, t_idle, _ in rows:
            ms = [f"{t * 1e3:.1f}ms" for t in (t_down, t_update, t_draw, t_idle)]
            print(f"{n:>10,} {ms[0]:>12} {ms[1]:>10} {ms[2]:>12} {ms[3]:>11}")
        first, last = rows[0], rows[-1]
        print(
            f"{'1M/10k':>10} {last[1] / first[1]:>11.1f}x {last[2] / first[2]:>9.1f}x "
            f"{last[3] / first[3]:>11.1f}x   (series 100x longer)"
        )
        print(
            f"{'draw only':>10} update+draw - update: 10k {1e3 * (first[3] - first[2]):.1f} ms, "
            f"1M {1e3 * (last[3] - last[2]):.1f} ms"
        )
    print(f"\ntotal {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
