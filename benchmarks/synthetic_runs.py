"""Synthetic finished runs for the benchmarks, written the way the trainer writes them.

One ``step`` event per step and a ``memory`` event every other step (2 Hz sampling at
4 steps/s), through the trainer's own :class:`EventSink`, so each run has the compact
index a real run has. Runs are cached under ``$TMPDIR/loratop-bench`` by their size.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
from pathlib import Path

from loratop.core import events as ev
from loratop.core.run_dir import write_status
from loratop.core.run_index import INDEX
from loratop.core.run_summary import settle_finished_run
from loratop.trainer.event_sink import EventSink

CACHE = Path(tempfile.gettempdir()) / "loratop-bench"


def make_run(run_dir: Path, steps: int, seed: int = 0) -> Path:
    """A finished run of ``steps`` steps at ``run_dir`` (reused when it is already there)."""
    if (run_dir / "status.json").is_file():
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    rng = random.Random(seed)
    sink = EventSink(run_dir / "events.jsonl")
    sink.emit(ev.LOG, message="importing torch, transformers, peft, trl")
    config = {"lora": {"r": 16, "lora_alpha": 32}, "training": {"learning_rate": 2e-4, "max_steps": steps}}
    sink.emit(
        ev.RUN_STARTED,
        run_name=run_dir.name,
        run_dir=str(run_dir),
        max_steps=steps,
        config=config,
        model={"name_or_path": "meta-llama/Llama-3.1-8B"},
        device={"kind": "cuda", "name": "NVIDIA H200", "count": 1},
        params={"trainable": 41_943_040, "total": 8_072_204_288, "fraction": 0.0052, "base_frozen": True},
    )
    for step in range(1, steps + 1):
        loss = 2.5 * math.exp(-step / (steps / 3 + 1)) + 0.8 + rng.gauss(0, 0.05)
        sink.emit(
            ev.STEP, step=step, loss=loss, lr=2e-4, grad_norm=0.3 + rng.random() / 10,
            tokens=4096 * step, epoch=step / steps, step_time_s=0.25,
        )  # fmt: skip
        if step % 2 == 0:
            used = 60_000_000_000 + rng.randrange(1 << 30)
            gpu = {"index": 0, "name": "NVIDIA H200", "used": used, "total": 150_000_000_000,
                   "free": 150_000_000_000 - used, "util_pct": 97, "temp_c": 61, "power_w": 512.5,
                   "torch": {"allocated": used - (2 << 30), "reserved": used - (1 << 30), "peak": used}}  # fmt: skip
            sink.emit(ev.MEMORY, host={"rss": 9_000_000_000, "total": 2 << 40, "available": 1 << 40},
                      gpu_state="ok", gpus=[gpu])  # fmt: skip
    sink.emit(ev.RUN_FINISHED, status=ev.COMPLETED, duration_s=steps / 4, step=steps)
    sink.close()
    settle_finished_run(run_dir)  # as the trainer does last
    write_status(run_dir, state="finished", status=ev.COMPLETED, exit_code=0, started_at=1.0, ended_at=2.0)
    return run_dir


def cached_run(steps: int) -> Path:
    return make_run(CACHE / f"run-{steps}", steps)


def without_index(run_dir: Path) -> None:
    """As a run written before the index existed (or with its index lost)."""
    for path in run_dir.iterdir():
        if path.name.startswith(INDEX):
            shutil.rmtree(path)


def size_mb(run_dir: Path) -> float:
    return os.path.getsize(run_dir / "events.jsonl") / 1e6
