"""How fast the dashboard opens, against what importing the training stack would cost.

Prints, measured in one run (best of 3 fresh interpreters each):
- importing the dashboard (``tui.app``: textual, widgets, config, protocol);
- the first frame of the monitor on a recorded run (headless, 80x24), from interpreter start;
- importing torch + transformers + peft (what the dashboard must never do);
and the ratios. Over SSH the first frame is what a user waits for.

    python benchmarks/startup.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECORDED = REPO / "tests" / "data" / "recorded_run"

FIRST_FRAME = f"""
import asyncio, shutil, tempfile, time
from pathlib import Path
from loratop.tui.app import LoratopApp
from loratop.tui.screens.monitor_screen import MonitorScreen
run = Path(tempfile.mkdtemp()) / "rec"
shutil.copytree({str(RECORDED)!r}, run)
async def main():
    app = LoratopApp(run)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, MonitorScreen)
asyncio.run(main())
"""


def _best_of(code: str, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    bare = _best_of("pass")
    dashboard = _best_of("import loratop.tui.app")
    frame = _best_of(FIRST_FRAME)
    stack = _best_of("import torch, transformers, peft")
    print(f"python startup (nothing)         {bare:6.2f} s")
    print(f"import loratop.tui.app           {dashboard:6.2f} s")
    print(f"first monitor frame (80x24)      {frame:6.2f} s")
    print(f"import torch+transformers+peft   {stack:6.2f} s")
    print(f"ratio: training stack / dashboard import   {stack / dashboard:5.1f}x")
    print(f"ratio: training stack / first frame        {stack / frame:5.1f}x")


if __name__ == "__main__":
    main()
