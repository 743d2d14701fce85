"""Regenerate docs/dashboard.svg: the real demo, mid-run, as the dashboard draws it.

python scripts/make_screenshot.py [--size 100x30] [--at-step 150]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from loratop.preflight.config import load_config, parse_overrides
from loratop.preflight.launcher import launch
from loratop.preflight.samples import resolve_config_path
from loratop.tui.app import LoratopApp
from loratop.tui.screens.monitor_screen import MonitorScreen

REPO = Path(__file__).resolve().parent.parent


async def _shoot(size: tuple[int, int], at_step: int, out: Path) -> None:
    config_path = resolve_config_path("tiny-cpu-demo")
    run_dir = Path(tempfile.mkdtemp(prefix="loratop-shot-")) / "tiny-cpu-demo"
    run = launch(load_config(config_path, parse_overrides([f"output_dir={run_dir}"])), config_path)
    app = LoratopApp(run.run_dir, run.events_fd)
    async with app.run_test(size=size) as pilot:
        screen = app.screen
        assert isinstance(screen, MonitorScreen)
        while screen.state.last_step < at_step and screen.state.finished is None:
            await pilot.pause(0.2)
        await pilot.pause(0.5)
        out.write_text(app.export_screenshot(title="loratop demo"))
        await pilot.press("d")
    run.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="100x30")
    parser.add_argument("--at-step", type=int, default=150)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.svg")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    asyncio.run(_shoot((width, height), args.at_step, args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
