"""What the step-boundary gather of a run of several ranks costs (issue 14).

About every 0.2 s (at a step boundary rank 0 names), the ranks all_reduce seven integers
(stop and checkpoint requests, the worst OOM level, the most spills, the next step to meet
at), so all act at one step; every 2 s they also
all_gather one row each (memory, OOM level, spills) for rank 0 to report. This times both
alone (2 ranks over gloo on this machine), then a real 2-rank run of the tiny model through
``loratop run --no-tui`` (the worst case: its steps take tens of ms), and prints their
share of a step, from the two costs and how often each happens.

    python benchmarks/rank_gather.py [--gathers 500] [--steps 120]     # about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

ROW = {
    "row": {
        "rank": 1, "node": 0, "local_rank": 1, "host": "gpu-box-7", "pid": 123456, "rss": 2_147_483_648,
        "gpu": {"index": 1, "cuda_index": 1, "name": "NVIDIA H100 80GB HBM3", "used": 61_000_000_000,
                "total": 85_000_000_000, "peak": 58_000_000_000},
        "oom_level": "ok", "spills": 3, "spill_bytes": 268_435_456,
    },
    "stop": None, "saves": 0, "no_save": False,
}  # fmt: skip
"""A row as a GPU rank sends it (a CPU rank's is smaller)."""


def _gather_worker(rank: int, port: int, gathers: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    gathered: list[object] = [None, None]
    for _ in range(20):  # warm up
        dist.all_gather_object(gathered, ROW["row"])
    dist.barrier()
    start = time.perf_counter()
    for _ in range(gathers):
        dist.all_gather_object(gathered, ROW["row"])
    gather = time.perf_counter() - start
    dist.barrier()
    start = time.perf_counter()
    for _ in range(gathers):
        flags = torch.tensor([0, 1, 0, 1, 2, 3, 40], dtype=torch.int64)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        flags.tolist()
    reduce = time.perf_counter() - start
    if rank == 0:
        Path(out).write_text(json.dumps({"gather_us": 1e6 * gather / gathers, "reduce_us": 1e6 * reduce / gathers}))
    dist.destroy_process_group()


def collective_costs_us(gathers: int) -> dict[str, float]:
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "gather.json")
        mp.spawn(_gather_worker, args=(port, gathers, out), nprocs=2, join=True)
        return dict(json.loads(Path(out).read_text()))


def step_time_s(steps: int) -> float:
    """Median step time of a real 2-rank run of the tiny model (CPU ranks, gloo)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        sets = [f"output_dir={run_dir}", "distributed.nproc_per_node=2", f"training.max_steps={steps}",
                "training.per_device_train_batch_size=1", "training.max_seq_length=64", "data.max_rows=64"]  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "loratop.cli.main", "run", "tiny-cpu-demo", "--no-tui",
             *[a for s in sets for a in ("--set", s)]],
            check=True, capture_output=True, cwd=REPO, env=dict(os.environ),
        )  # fmt: skip
        times = []
        for line in (run_dir / "events.jsonl").read_text().splitlines():
            event = json.loads(line)
            if event["type"] == "step" and event["step"] > 5:
                times.append(event["step_time_s"])
        return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gathers", type=int, default=500)
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    costs = collective_costs_us(args.gathers)
    step = step_time_s(args.steps)
    meetings_per_step = min(1.0, step / 0.2)  # SYNC_INTERVAL_S in trainer/rank_meeting.py
    gathers_per_step = min(1.0, step / 2.0)  # RANKS_REPORT_S
    per_step = meetings_per_step * costs["reduce_us"] + gathers_per_step * costs["gather_us"]
    print(f"all_reduce of the 7 flags, 2 ranks, gloo: {costs['reduce_us']:.0f} µs, about every 0.2 s")
    print(f"all_gather_object of one row each:       {costs['gather_us']:.0f} µs, every 2 s")
    print(f"tiny model, 2 CPU ranks: median step {1e3 * step:.1f} ms")
    print(f"loratop's collectives / step: {per_step / 1e6 / step:.2%} "
          f"(every step, both, as first built: {(costs['gather_us']) / 1e6 / step:.2%})")  # fmt: skip


if __name__ == "__main__":
    main()
