"""Regenerate docs/editor.svg and docs/compare.svg from the recorded tiny runs in tests/data/runs.

python scripts/make_loop_screenshots.py [--size 80x24]

The editor is opened on tiny-r16 ("rerun with changes") with r raised to 256, so the
advisor's warning shows at its field; the compare screen shows tiny-r8, tiny-r16 and
tiny-lr-high (whose two spikes are marked).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

from textual.widgets import Input

from loratop.tui.app import LoratopApp
from loratop.tui.screens.knob_editor_screen import KnobEditor

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "tests" / "data" / "runs"


async def _editor(size: tuple[int, int], runs: Path, out: Path) -> None:
    app = LoratopApp(None, runs_root=runs, edit=runs / "tiny-r16")
    async with app.run_test(size=size) as pilot:
        while not (isinstance(app.screen, KnobEditor) and app.screen.dataset_rows is not None):
            await pilot.pause(0.1)
        app.screen.query_one("#knob-lora-r", Input).value = "256"
        await pilot.pause(0.3)
        out.write_text(app.export_screenshot(title="loratop edit tiny-r16"))


async def _compare(size: tuple[int, int], runs: Path, out: Path) -> None:
    app = LoratopApp(None, compare=[runs / "tiny-r8", runs / "tiny-r16", runs / "tiny-lr-high"])
    async with app.run_test(size=size) as pilot:
        for _ in range(100):  # the runs are folded on a worker: wait until they are drawn
            if getattr(app.screen, "runs", None):
                break
            await pilot.pause(0.1)
        await pilot.pause(0.5)
        out.write_text(app.export_screenshot(title="loratop compare tiny-r8 tiny-r16 tiny-lr-high"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="80x24")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        shutil.copytree(RUNS, runs)
        asyncio.run(_editor((width, height), runs, REPO / "docs" / "editor.svg"))
        asyncio.run(_compare((width, height), runs, REPO / "docs" / "compare.svg"))
    print("wrote docs/editor.svg, docs/compare.svg")


if __name__ == "__main__":
    main()
