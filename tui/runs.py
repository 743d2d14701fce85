"""Find runs on disk and summarise them (for ``loratop ls``, the home screen and ``attach``).

A run is a folder with an ``events.jsonl``; everything here is read from its files,
so runs launched from any terminal show up.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import events as ev
from trainer.run_dir import EVENTS, pid_alive, read_status

DEFAULT_ROOT = Path("runs")


@dataclass
class RunSummary:
    """One line of ``loratop ls``."""

    run_dir: Path
    status: str
    """``running``, ``starting``, a finished status, or ``exited without report``."""
    step: int
    max_steps: int | None
    last_loss: float | None
    peak_vram: int | None
    """Peak NVML used bytes on any GPU; ``None`` when no GPU reading exists."""
    spikes: int
    spills: int
    started_at: float | None
    device: str | None

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def is_running(self) -> bool:
        return self.status in ("running", "starting")


def summarise_run(run_dir: Path) -> RunSummary:
    """Read a run folder's status and events into a summary."""
    events, _ = ev.read_events(str(run_dir / EVENTS)) if (run_dir / EVENTS).exists() else ([], 0)
    step, last_loss, max_steps, device = 0, None, None, None
    peak: int | None = None
    spikes = spills = 0
    finished: dict[str, Any] | None = None
    started = False
    for event in events:
        kind = event["type"]
        if kind == ev.STEP:
            step = event.get("step", step)
            loss = event.get("loss")
            last_loss = float(loss) if isinstance(loss, (int, float)) else math.nan
        elif kind == ev.MEMORY:
            for gpu in event.get("gpus") or []:
                if isinstance(gpu.get("used"), int):
                    peak = max(peak or 0, gpu["used"])
        elif kind == ev.RUN_STARTED:
            started = True
            max_steps = event.get("max_steps")
            device = event.get("device", {}).get("kind")
        elif kind == ev.SPIKE:
            spikes += 1
        elif kind == ev.SPILL:
            spills += 1
        elif kind == ev.RUN_FINISHED:
            finished = event
    status_file = read_status(run_dir) or {}
    if finished is not None:
        status = str(finished.get("status"))
    else:
        pid = status_file.get("pid")
        alive = isinstance(pid, int) and pid_alive(pid)
        launched = status_file.get("launched_at") or status_file.get("started_at") or 0
        if alive or (pid is None and time.time() - launched < 60):
            status = "running" if started else "starting"
        else:
            status = "exited without report"
    started_at = status_file.get("started_at") or (events[0]["t"] if events else None)
    return RunSummary(run_dir, status, step, max_steps, last_loss, peak, spikes, spills, started_at, device)


def list_runs(root: Path = DEFAULT_ROOT) -> list[RunSummary]:
    """Every run under ``root``: running ones first, then newest first."""
    if not root.is_dir():
        return []
    runs = [summarise_run(p) for p in root.iterdir() if (p / EVENTS).is_file()]
    return sorted(runs, key=lambda r: (not r.is_running, -(r.started_at or 0)))


class RunNotFound(Exception):
    """No run matches; the message says where loratop looked."""


def find_run(name_or_dir: str | None, root: Path = DEFAULT_ROOT) -> Path:
    """A run folder from a name under ``root``, a path, or the latest run when ``None``."""
    if name_or_dir is None:
        runs = list_runs(root)
        if not runs:
            raise RunNotFound(f"no runs under {root}/ (start one with: loratop demo)")
        return max(runs, key=lambda r: r.started_at or 0).run_dir
    for candidate in (Path(name_or_dir), root / name_or_dir):
        if (candidate / EVENTS).is_file():
            return candidate
    raise RunNotFound(f"no run {name_or_dir!r}: not a folder with events.jsonl, nor a run under {root}/")
