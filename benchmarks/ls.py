"""``loratop ls`` over a folder of many finished runs.

Builds 200 synthetic runs of 20k steps each, written through the trainer's own sink and
finished as the trainer finishes (each has its compact index and its cached summary), then
times ``loratop ls`` in a fresh interpreter, best of 3: as they are, without their summaries,
and without their indexes (runs from an older loratop). ``ls`` never writes, so the last two
cost that much at every look, until ``loratop ls --index`` writes their caches once (timed too).
Prints seconds and the ratios.

    python benchmarks/ls.py            # about 3 minutes the first time (builds the runs)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_runs import CACHE, make_run, without_index  # noqa: E402

RUNS, STEPS = 200, 20_000


def ls_seconds(root: Path, runs: int = 3, before: object = None, *flags: str) -> float:
    best = float("inf")
    for _ in range(runs):
        if callable(before):
            before()
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "loratop.cli.main", "ls", *flags, "--runs-dir", str(root)],
            check=True,
            capture_output=True,
        )
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    from loratop.core.run_index import INDEX
    from loratop.core.run_summary import SUMMARY, settle_finished_run

    root = CACHE / f"ls-{RUNS}x{STEPS}"
    if sum(1 for _ in root.glob("*/status.json")) < RUNS:
        first = make_run(CACHE / f"run-{STEPS}", STEPS)
        root.mkdir(parents=True, exist_ok=True)
        for i in range(RUNS):  # copies of one run, each its own folder with its own index
            subprocess.run(["cp", "-a", str(first), str(root / f"r{i:03d}")], check=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import loratop.cli.main"], check=True)
    floor = time.perf_counter() - start

    def drop_summaries() -> None:
        for run in root.iterdir():
            (run / INDEX / SUMMARY).unlink(missing_ok=True)

    def drop_indexes() -> None:
        for run in root.iterdir():
            without_index(run)

    def settle() -> None:  # what the trainer does last
        for run in root.iterdir():
            settle_finished_run(run)

    settle()
    again = ls_seconds(root)
    fresh = ls_seconds(root, 3, drop_summaries)
    unindexed = ls_seconds(root, 1, drop_indexes)
    indexing = ls_seconds(root, 1, None, "--index")
    after = ls_seconds(root)
    print(f"loratop ls, {RUNS} runs x {STEPS:,} steps (best of 3):")
    print(f"  runs as the trainer leaves them (index and summary)    {again:6.2f} s")
    print(f"  runs with an index but no summary (every look)         {fresh:6.2f} s   ({fresh / again:.1f}x)")
    print(f"  runs from before the index (every look, once timed)    {unindexed:6.2f} s   ({unindexed / again:.1f}x)")
    print(f"  ls --index over them (writes their caches, once)       {indexing:6.2f} s   ({indexing / again:.1f}x)")
    print(f"  ls after that                                          {after:6.2f} s   ({after / again:.1f}x)")
    print(f"  (starting Python and importing the CLI alone: {floor:.2f} s)")


if __name__ == "__main__":
    main()
