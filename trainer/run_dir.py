"""The run folder's layout and its ``status.json`` (torch-free; the dashboard reads it).

A run folder holds ``config.yaml`` (the resolved config), ``events.jsonl``,
``trainer.log``, ``status.json`` and adapter checkpoints; nothing else is needed to
watch a run from another terminal.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
EVENTS = "events.jsonl"
LOG = "trainer.log"
STATUS = "status.json"
ADAPTER = "adapter"


def write_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``status.json`` atomically (a reader never sees half a file).

    Returns:
        The whole status after the merge.
    """
    status = read_status(run_dir) or {}
    status.update(fields)
    tmp = run_dir / f".{STATUS}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(status, indent=2) + "\n")
    os.replace(tmp, run_dir / STATUS)
    return status


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """``status.json`` as a dict, or ``None`` if it is missing or unreadable."""
    try:
        data = json.loads((run_dir / STATUS).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie we could reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


LAUNCH_GRACE_S = 60.0
"""A run launched without a pid yet (the trainer still starting) counts as alive this long."""


def trainer_alive(status: dict[str, Any]) -> bool:
    """Whether the trainer behind a ``status.json`` may still be running."""
    pid = status.get("pid")
    if isinstance(pid, int):
        return pid_alive(pid)
    launched = status.get("launched_at") or status.get("started_at") or 0
    return time.time() - float(launched) < LAUNCH_GRACE_S


def now() -> float:
    """Unix time, for status fields."""
    return time.time()
