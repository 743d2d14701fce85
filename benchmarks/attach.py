"""``loratop attach`` on a long finished run: time to the first full frame, and peak memory.

For 10k, 100k and 1M steps (a synthetic run written through the trainer's own sink: one step
event per step, a memory event every other step), a fresh interpreter opens the monitor
headless at 120x40 and exits once the whole run is on screen. Measured twice in one run:
with the compact index the trainer writes beside ``events.jsonl``, and without it (a run
from before the index: every line parsed). Prints seconds, peak RSS and the ratio.

    python benchmarks/attach.py            # about 2 minutes the first time (builds the runs)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_runs import cached_run, size_mb, without_index  # noqa: E402

LENGTHS = (10_000, 100_000, 1_000_000)

FIRST_FRAME = """
import asyncio, resource, sys
from pathlib import Path
from loratop.tui.app import LoratopApp
async def main():
    app = LoratopApp(Path(sys.argv[1]))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        while screen.state.finished is None or screen._drawn_version != screen.state.version:
            await pilot.pause(0.01)  # until the whole run is folded and pushed to the widgets
        await pilot.pause()  # and drawn
asyncio.run(main())
"""


def first_frame(run_dir: Path) -> tuple[float, float]:
    """(seconds from interpreter start to the full frame, peak RSS in MiB) of a fresh process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", FIRST_FRAME, str(run_dir)])
    _, code, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(code)
    if child.returncode != 0:
        raise SystemExit(f"the attach exited with {child.returncode}")
    return seconds, usage.ru_maxrss / 1024  # this child's peak, in KiB


def main() -> None:
    print(f"{'steps':>9}  {'events.jsonl':>12}  {'indexed':>16}  {'no index':>17}  ratio")
    for steps in LENGTHS:
        run_dir = cached_run(steps)
        fast, fast_rss = first_frame(run_dir)
        without_index(run_dir)
        slow, slow_rss = first_frame(run_dir)  # this look leaves a cached index behind again
        print(
            f"{steps:>9,}  {size_mb(run_dir):>9.0f} MB  {fast:>6.2f} s {fast_rss:>5.0f} MiB"
            f"  {slow:>6.2f} s {slow_rss:>5.0f} MiB  {slow / fast:4.1f}x"
        )


if __name__ == "__main__":
    main()
