"""The home screen's live list: what one look costs, over 200 finished runs and one that trains.

The home screen looks every 2 s (``RunCatalog.runs``). This builds the ``benchmarks/ls.py``
folder (200 finished runs of 20k steps) plus one running run of 100k steps, then times, in
this process: the first look (every run summarised: finished runs from their cached summary),
and later looks while the running run appends 8 steps between two of them. Prints seconds
per look and the bytes of ``events.jsonl`` read for the running run.

    python benchmarks/home_live.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ls as ls_bench  # noqa: E402
from synthetic_runs import CACHE, make_run  # noqa: E402

from loratop.core import events as ev  # noqa: E402
from loratop.core.run_dir import process_identity  # noqa: E402
from loratop.core.runs import RunCatalog  # noqa: E402
from loratop.trainer.event_sink import EventSink  # noqa: E402


def main() -> None:
    root = CACHE / f"ls-{ls_bench.RUNS}x{ls_bench.STEPS}"
    if sum(1 for _ in root.glob("*/status.json")) < ls_bench.RUNS:
        ls_bench.main()  # builds the folder (and prints its own figures)
    live = root / "zz-live"
    shutil.rmtree(live, ignore_errors=True)
    shutil.copytree(make_run(CACHE / "run-100000", 100_000), live)
    lines = (live / "events.jsonl").read_bytes().splitlines(keepends=True)
    (live / "events.jsonl").write_bytes(b"".join(lines[:-1]))  # not finished: it trains on
    shutil.rmtree(live / ".loratop-index")
    status = {"pid": os.getpid(), **process_identity(os.getpid()), "state": "running", "started_at": 3e9}
    (live / "status.json").write_text(json.dumps(status))
    catalog = RunCatalog(root)
    start = time.perf_counter()
    runs = catalog.runs()
    first = time.perf_counter() - start
    assert runs[0].name == "zz-live" and runs[0].status == "running", runs[0]
    sink = EventSink(live / "events.jsonl")  # appends (a fresh sink on a file: no index of its own)
    looks, size_before = [], (live / "events.jsonl").stat().st_size
    for step in range(100_000, 100_040, 8):
        for s in range(step, step + 8):
            sink.emit(ev.STEP, step=s, loss=1.0, lr=2e-4, grad_norm=0.3, tokens=4096 * s)
        start = time.perf_counter()
        runs = catalog.runs()
        looks.append(time.perf_counter() - start)
    sink.close()
    grown = (live / "events.jsonl").stat().st_size - size_before
    print(f"home screen list, {len(runs)} runs ({ls_bench.RUNS} finished x {ls_bench.STEPS:,} steps, 1 running):")
    print(f"  first look (the running run folded once; 100k steps, no index)   {first:6.2f} s")
    worst = max(looks) * 1000
    print(f"  each later look, 8 steps appended in between                     {worst:6.0f} ms (worst of 5)")
    print(f"  events.jsonl bytes read per later look for the running run      ~{grown // len(looks):,}")
    shutil.rmtree(live)


if __name__ == "__main__":
    main()
