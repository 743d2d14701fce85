"""The run folder's layout and its ``status.json`` (torch-free; the dashboard reads it).

A run folder holds ``config.yaml`` (the resolved config), ``events.jsonl``,
``trainer.log``, ``status.json`` and adapter checkpoints; nothing else is needed to
watch a run from another terminal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
EVENTS = "events.jsonl"
LOG = "trainer.log"
STATUS = "status.json"
ADAPTER = "adapter"
LOCK = "trainer.lock"
"""Held (``flock``) by the trainer for as long as it runs: no second trainer writes here."""

STAMPED = re.compile(r"-\d{8}-\d{6}(-\d+)?$")
"""A folder name as loratop makes them, ``<name>-YYYYmmdd-HHMMSS``: such a folder that another
launch claimed first gets a suffix (``-2``, ``-3``, ...)."""


class RunDirError(Exception):
    """The run folder cannot be used (not creatable, not writable); the message says why."""


class RunDirTaken(RunDirError):
    """The run folder already holds a run, or another trainer holds it; the message says which."""


def claim_run_dir(path: Path) -> Path:
    """Create a run folder and claim it, atomically: the claim is the exclusive creation of
    its ``events.jsonl``, so of launches racing for one folder exactly one wins.

    A time-stamped name (:data:`STAMPED`) that is already claimed moves on to ``-2``,
    ``-3``, ...: parallel launches in the same second get a folder each.

    Returns:
        The folder claimed (``path``, or ``path`` with a suffix).

    Raises:
        RunDirTaken: ``path`` is not time-stamped and already holds a run.
    """
    candidate, n = path, 2
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            os.close(os.open(candidate / EVENTS, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return candidate
        except FileExistsError:
            if STAMPED.search(path.name) is None or n > 999:
                raise RunDirTaken(f"{candidate}: already holds a run ({EVENTS}); choose a new folder") from None
        except OSError as exc:  # a file where a folder should be, read-only, name too long, disk full
            raise RunDirError(f"{candidate}: cannot create the run folder: {exc.strerror or exc}") from None
        candidate, n = path.with_name(f"{path.name}-{n}"), n + 1


def release_claim(run_dir: Path) -> None:
    """Undo :func:`claim_run_dir` after a launch failed before the trainer started: remove the
    files the launch wrote (while ``events.jsonl`` is still empty), so the name is free again."""
    if (run_dir / EVENTS).is_file() and (run_dir / EVENTS).stat().st_size == 0:
        for name in (EVENTS, CONFIG, STATUS, LOG):
            with contextlib.suppress(OSError):
                (run_dir / name).unlink()
        with contextlib.suppress(OSError):
            run_dir.rmdir()  # only if nothing else is there


def hold_run_dir(run_dir: Path) -> int:
    """Take the run folder's lock for this process's lifetime (the trainer calls it first).

    Returns:
        The lock's file descriptor: keep it open; the lock goes when the process does.

    Raises:
        RunDirTaken: another live process holds it (named by its pid).
    """
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunDirTaken(f"{run_dir}: another trainer (pid {holder}) is writing into this run folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


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
    """Whether a process with this pid exists (and is not a zombie we could reap).

    Says nothing about *which* process it is: a pid is reused once its process is gone.
    Use :func:`proven_trainer_pid` before signalling anything.
    """
    if valid_pid(pid) is None:
        return False
    try:
        os.kill(pid, 0)  # signal 0: a probe, nothing is delivered
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return _proc_state(pid) != "Z"


PID_MAX = 4_194_304
"""Linux's highest possible pid (``/proc/sys/kernel/pid_max`` can be at most this)."""


def valid_pid(value: Any) -> int | None:
    """``value`` if it can be one other process's pid: an int in 2..PID_MAX.

    0 and negative numbers name process groups (``kill(-1, …)`` as root signals every
    process on the machine) and 1 is init: never ours to signal.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 < value <= PID_MAX:
        return None
    return value


def _proc_stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name (which may hold spaces or parentheses)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _proc_state(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[0] if fields else None


def _start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (``stat`` field 22): with the boot
    id, a pid's start time tells a reused pid from the process that first had it."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def process_identity(pid: int) -> dict[str, Any]:
    """What proves later that ``pid`` is still this process: host, boot and start time.

    The trainer writes these into ``status.json`` beside its pid; a field it cannot know
    (no ``/proc``) is ``None``, and such a status proves nothing.
    """
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid_start_ticks": _start_ticks(pid)}


def why_not_proven(status: dict[str, Any]) -> str | None:
    """Why ``status.json`` does not prove that its pid is this run's running trainer, in words;
    ``None`` when it does."""
    raw = status.get("pid")
    pid = valid_pid(raw)
    if pid is None:
        return f"status.json names no usable trainer pid ({raw!r})"
    host = status.get("host")
    if host != socket.gethostname():
        return f"pid {pid} is recorded on host {host!r}, not this one" if host else f"pid {pid} has no host recorded"
    boot, ticks = status.get("boot_id"), status.get("pid_start_ticks")
    if boot is None or ticks is None:
        return f"pid {pid} has no start time recorded, so it cannot be told from a reused pid"
    if boot != _boot_id():
        return f"pid {pid} was recorded before this machine last booted"
    state = _proc_state(pid)
    if state is None:
        return f"the trainer (pid {pid}) is gone"
    if state == "Z":
        return f"the trainer (pid {pid}) has exited"
    if _start_ticks(pid) != ticks:
        return f"pid {pid} now belongs to another process (it started at another time)"
    return None


def proven_trainer_pid(status: dict[str, Any]) -> int | None:
    """The pid of this run's trainer if ``status.json`` proves it is still that process
    (same host, same boot, same start time, not a zombie), else ``None``. The only pid
    that may be signalled."""
    return valid_pid(status.get("pid")) if why_not_proven(status) is None else None


LAUNCH_GRACE_S = 60.0
"""A run launched without a pid yet (the trainer still starting) counts as alive this long."""


def trainer_alive(status: dict[str, Any]) -> bool:
    """Whether the trainer behind a ``status.json`` is provably still running.

    A pid alone proves nothing (it may have been reused, or the folder copied from
    another machine): see :func:`proven_trainer_pid`.
    """
    if "pid" in status:
        return proven_trainer_pid(status) is not None
    launched = status.get("launched_at") or status.get("started_at") or 0
    try:
        return time.time() - float(launched) < LAUNCH_GRACE_S
    except (TypeError, ValueError):
        return False  # a damaged time: not provably starting


def now() -> float:
    """Unix time, for status fields."""
    return time.time()
