"""Find runs on disk and summarise them (for ``loratop ls``, the home screen and ``attach``).

A run is a folder with an ``events.jsonl``; everything here is read from its files,
so runs launched from any terminal show up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer import events as ev
from trainer.run_dir import EVENTS, read_status, trainer_alive
from tui.run_state import RunState

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
    """Read a run folder's status and events into a summary (the dashboard's own model)."""
    events, _ = ev.read_events(str(run_dir / EVENTS)) if (run_dir / EVENTS).exists() else ([], 0)
    state = RunState(run_dir)
    state.apply_all(events)
    status_file = read_status(run_dir) or {}
    state.trainer_gone = state.finished is None and not trainer_alive(status_file)
    return RunSummary(
        run_dir,
        state.status,
        state.last_step,
        state.max_steps,
        state.last_loss,
        state.peak_gpu_used,
        len(state.spikes),
        len(state.spills),
        status_file.get("started_at") or state.first_t,
        state.device_kind,
    )


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
