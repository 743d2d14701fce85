"""The run folder's layout and its ``status.json`` (torch-free; the dashboard reads it).

A run folder holds ``config.yaml`` (the resolved config), ``events.jsonl``,
``trainer.log``, ``status.json`` and adapter checkpoints; nothing else is needed to
watch a run from another terminal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from loratop.core.events import LOST as _LOST
from loratop.core.events import RUN_FINISHED, decode_line

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


class RunDirNotEmpty(RunDirError):
    """The run folder holds files loratop did not make (and no run); the message names some."""


def _entries(folder: Path) -> list[str]:
    """What ``folder`` holds, hidden names included (after the others), sorted; folders end in ``/``."""
    with os.scandir(folder) as found:
        names = [entry.name + ("/" if entry.is_dir(follow_symlinks=False) else "") for entry in found]
    return sorted(names, key=lambda name: (name.startswith("."), name))


def _not_ours(entries: list[str]) -> str:
    """``holds files loratop did not make (a, b, c, …); ...``: what a refusal says after the folder's name."""
    shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
    return f"holds files loratop did not make ({shown}); choose a new or empty folder"


def foreign_files(folder: Path) -> str | None:
    """Why ``folder`` cannot become a run folder because of what is in it, in words.

    ``None`` when it is missing, unreadable (the claim says why), empty, or holds a run
    (``events.jsonl``: that is :class:`RunDirTaken`'s case). For ``loratop check``, which
    says before a launch what :func:`claim_run_dir` would refuse.
    """
    try:
        entries = _entries(folder)
    except OSError:
        return None
    return _not_ours(entries) if entries and EVENTS not in entries else None


def claim_run_dir(path: Path) -> Path:
    """Create a run folder and claim it, atomically: the claim is the exclusive creation of
    its ``events.jsonl``, so of launches racing for one folder exactly one wins.

    An existing folder is claimed only when it is empty: one that holds anything else
    (the user's own ``config.yaml``, notes, a hidden file) is never written into, because
    the launch would overwrite files of loratop's names. A time-stamped name
    (:data:`STAMPED`) that is already claimed or not empty moves on to ``-2``, ``-3``,
    ...: parallel launches in the same second get a folder each.

    Returns:
        The folder claimed (``path``, or ``path`` with a suffix).

    Raises:
        RunDirTaken: ``path`` is not time-stamped and already holds a run.
        RunDirNotEmpty: ``path`` is not time-stamped and holds files but no run.
        RunDirError: the folder cannot be made (a file in its path, read-only, name too long).
    """
    stamped = STAMPED.search(path.name) is not None
    candidate, n = path, 2
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            entries = _entries(candidate)
            if not entries:  # checked first: nothing is ever written into a folder that is not ours
                os.close(os.open(candidate / EVENTS, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                return candidate
        except FileExistsError:  # events.jsonl, made by a parallel launch since we looked (or a file at path)
            entries = [EVENTS]
        except OSError as exc:  # a file where a folder should be, read-only, name too long, disk full
            raise RunDirError(f"{candidate}: cannot create the run folder: {exc.strerror or exc}") from None
        if not stamped or n > 999:
            if EVENTS in entries:
                raise RunDirTaken(f"{candidate}: already holds a run ({EVENTS}); choose a new folder")
            raise RunDirNotEmpty(f"{candidate}: {_not_ours(entries)}")
        candidate, n = path.with_name(f"{path.name}-{n}"), n + 1


def release_claim(run_dir: Path) -> None:
    """Undo :func:`claim_run_dir` after a launch failed before the trainer started: remove the
    files the launch wrote (while ``events.jsonl`` is still empty), so the name is free again."""
    if (run_dir / EVENTS).is_file() and (run_dir / EVENTS).stat().st_size == 0:
        for name in (CONFIG, STATUS, LOG, EVENTS):  # the claim last: a racing launch never sees a stranger's folder
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
    try:
        # O_NOFOLLOW: a trainer.lock that is a symbolic link is never followed (its target
        # would be truncated and written: any file the user can write).
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunDirTaken(f"{run_dir / LOCK}: is a symbolic link, not this run's lock; refusing it") from None
        raise
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
    try:
        tmp.write_text(json.dumps(status, indent=2) + "\n")
        os.replace(tmp, run_dir / STATUS)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()  # a full disk leaves no empty temp file behind
        raise
    return status


CONTROL = "control.json"
"""Requests to a run that takes them from its folder (a ``LoratopCallback`` run without
signal handlers): counters of ``stop`` and ``checkpoint`` requests; each rise is one."""

CONTROL_KINDS = ("stop", "checkpoint")


def request_control(run_dir: Path, kind: str) -> dict[str, int]:
    """Ask a run that reads requests from its folder to stop or checkpoint at its next step
    boundary: one more ``kind`` in ``control.json``, written atomically.

    Raises:
        ValueError: ``kind`` is not ``stop`` or ``checkpoint``.
        OSError: the folder cannot be written.
    """
    if kind not in CONTROL_KINDS:
        raise ValueError(f"unknown request {kind!r}; one of {', '.join(CONTROL_KINDS)}")
    counts = read_control(run_dir) or {}
    counts[kind] = counts.get(kind, 0) + 1
    tmp = run_dir / f".{CONTROL}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(counts) + "\n")
    os.replace(tmp, run_dir / CONTROL)
    return counts


MAX_JSON_BYTES = 1 << 20
"""A run folder's small JSON files (status, control, the index's meta and summary) are a few
hundred bytes; one larger than this is damaged, and is not read."""


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A small JSON file of a run folder, or ``None`` when it is missing, too big, not JSON, or
    nested past Python's stack. Whatever such a file holds never raises out of here: it may
    have been torn by a crash, edited by hand or written by anyone."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:
            return None
        return json.loads(data)
    except (OSError, ValueError, RecursionError):  # ValueError: not JSON, not UTF-8, a 5000-digit number
        return None


def read_control(run_dir: Path) -> dict[str, int] | None:
    """The request counters of ``control.json``; ``None`` when there are none (or it is damaged).

    Read at the step boundaries of someone else's training (``LoratopCallback``): it never raises."""
    data = read_json(run_dir / CONTROL)
    if not isinstance(data, dict):
        return None
    return {
        k: v
        for k, v in data.items()
        if k in CONTROL_KINDS and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63
    }


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """``status.json`` as a dict, or ``None`` if it is missing or unreadable."""
    data = read_json(run_dir / STATUS)
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
    return _check_identity(status)[0]


def proof_of_death(status: dict[str, Any]) -> str | None:
    """Why ``status.json`` proves its trainer is gone, in words; ``None`` when it may still run.

    Only this machine can tell: a pid recorded on another host, or without a start time,
    proves neither life nor death (see :func:`why_not_proven`).
    """
    why, dead = _check_identity(status)
    return why if dead else None


def _check_identity(status: dict[str, Any]) -> tuple[str | None, bool]:
    """(why the pid is not proven to be the trainer, whether that proves the trainer gone)."""
    raw = status.get("pid")
    pid = valid_pid(raw)
    if pid is None:
        return f"status.json names no usable trainer pid ({raw!r})", False
    host = status.get("host")
    if host != socket.gethostname():
        where = f"is recorded on host {host!r}, not this one" if host else "has no host recorded"
        return f"pid {pid} {where}", False
    boot, ticks = status.get("boot_id"), status.get("pid_start_ticks")
    if boot is None or ticks is None:
        return f"pid {pid} has no start time recorded, so it cannot be told from a reused pid", False
    if boot != _boot_id():
        return f"pid {pid} was recorded before this machine last booted", True
    state = _proc_state(pid)
    if state is None:
        return f"the trainer (pid {pid}) is gone", True
    if state == "Z":
        return f"the trainer (pid {pid}) has exited", True
    if _start_ticks(pid) != ticks:
        return f"pid {pid} now belongs to another process (it started at another time)", True
    return None, False


def proven_trainer_pid(status: dict[str, Any]) -> int | None:
    """The pid of this run's trainer if ``status.json`` proves it is still that process
    (same host, same boot, same start time, not a zombie), else ``None``. The only pid
    that may be signalled."""
    return valid_pid(status.get("pid")) if why_not_proven(status) is None else None


def lock_holders(run_dir: Path) -> set[int] | None:
    """The pids that hold the run's :data:`LOCK` (``flock``), as the kernel lists them in
    ``/proc/locks`` (matched by the lock file's inode); ``None`` where the kernel cannot say
    (no ``/proc/locks``: not Linux). A lock file that is missing or not a plain file has none."""
    try:
        st = os.lstat(run_dir / LOCK)
        if not stat.S_ISREG(st.st_mode):
            return set()
    except OSError:
        return set()
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    holders = set()
    for line in text.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 10998 fe:00:2163115 0 EOF"; a waiter's line reads "1: -> FLOCK ..."
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        pid, where = parts[4], parts[5]
        inode = where.rsplit(":", 1)[-1]
        if pid.isdigit() and inode.isdigit() and int(inode) == st.st_ino:
            holders.add(int(pid))
    return holders


def signal_target(run_dir: Path, status: dict[str, Any]) -> tuple[int | None, str | None]:
    """The pid that may be signalled for this run, or ``None`` and why not.

    The identity in ``status.json`` (pid, host, boot, start time) is readable by anyone and
    so can be copied from any live process; it must also be the process that holds this run
    folder's lock (every loratop trainer takes it first, and holds it until it exits).
    """
    pid = proven_trainer_pid(status)
    if pid is None:
        return None, why_not_proven(status)
    holders = lock_holders(run_dir)
    if holders is not None and pid not in holders:
        return None, f"pid {pid} does not hold {LOCK}: it is not this run's trainer"
    return pid, None


def process_paused(pid: int) -> bool:
    """Whether a process is stopped (``SIGSTOP``, ``SIGTSTP``, a debugger): its state in
    ``/proc/<pid>/stat`` is ``T`` or ``t``. ``False`` where that cannot be read."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat_line.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return bool(fields) and fields[0] in ("T", "t")


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
    except (TypeError, ValueError, OverflowError):
        return False  # a damaged time: not provably starting


LOST = _LOST
"""``status.json``'s ``state`` (and ``status``) once the trainer is known to be gone without
a ``run_finished`` event: killed (``kill -9``, the kernel's OOM killer), or crashed hard."""

NO_REPORT = "trainer gone, no report"
"""The cause of a loss when nothing says more (no exit code: it was not our child)."""


SIGKILL_HINT = "SIGKILL comes from kill -9, or from the kernel's OOM killer when host memory ran out (see dmesg)"


def exit_cause(returncode: int | None) -> str:
    """How a trainer that sent no ``run_finished`` ended, from its exit code, in words."""
    if returncode is None:
        return NO_REPORT
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode} without a report"


def record_lost(
    run_dir: Path, cause: str, *, last_step: int | None = None, ended_at: float | None = None, **fields: Any
) -> dict[str, Any] | None:
    """Record in ``status.json`` that the trainer is gone without a report (the watcher that notices
    first: the dashboard, ``--no-tui``, ``attach``; never a listing, which only says so).

    Only call it once the trainer is proven gone (our child's exit, :func:`proof_of_death`).
    A status that already says how the run ended is left alone, as is a folder that is gone
    or cannot be written (a read-only copy, a full disk): the caller still shows the loss.

    Returns:
        The status as written, or ``None`` when nothing was written.
    """
    status = read_status(run_dir)
    if status is None and not (run_dir / EVENTS).is_file():
        return None  # the folder is gone (or never was a run)
    if (status or {}).get("state") in ("finished", LOST) or has_finished(run_dir):
        return None
    try:
        return write_status(
            run_dir,
            state=LOST,
            status=LOST,
            lost_cause=cause,
            last_step=last_step,
            ended_at=ended_at if ended_at is not None else time.time(),
            **fields,
        )
    except OSError:
        return None


def has_finished(run_dir: Path) -> bool:
    """Whether ``events.jsonl`` ends with a ``run_finished`` event (its last 64 KiB are read)."""
    try:
        with open(run_dir / EVENTS, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 65536))
            tail = fh.read()
    except OSError:
        return False
    lines = tail.splitlines()[1:] if len(tail) == 65536 else tail.splitlines()  # the first may be cut
    return any((event := decode_line(line)) is not None and event["type"] == RUN_FINISHED for line in lines)


def now() -> float:
    """Unix time, for status fields."""
    return time.time()


# -- a full disk, a removed folder: room kept for the last words, and a place to rescue to ----

RESERVE = ".loratop-reserve"
"""Room the trainer keeps in its run folder (:data:`RESERVE_BYTES`) and gives back when the disk
fills, so the last events and ``status.json`` can still be written there."""
RESERVE_BYTES = 1 << 20

RESCUE_ENV = "LORATOP_RESCUE_DIR"
"""Where a run's adapter goes first when its own folder has no room (or was removed)."""


def make_reserve(run_dir: Path, size: int = RESERVE_BYTES) -> bool:
    """Set :data:`RESERVE` aside in the run folder. Returns whether there was room for it."""
    path = run_dir / RESERVE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        return False
    return True


def shrink_reserve(run_dir: Path, keep: int) -> None:
    """Give back all of the reserve's room but ``keep`` bytes (for the very last writes)."""
    with contextlib.suppress(OSError):
        os.truncate(run_dir / RESERVE, keep)


def release_reserve(run_dir: Path) -> None:
    """Give the reserve's room back (the disk is full, or the run is over)."""
    with contextlib.suppress(OSError):
        (run_dir / RESERVE).unlink()


def rescue_roots() -> list[Path]:
    """Where a run's adapter and events go when its own folder cannot take them, in order:
    ``$LORATOP_RESCUE_DIR``, ``~/.cache/loratop/rescued`` (``$XDG_CACHE_HOME``), then the
    temporary folder: three places that are rarely all on one full disk."""
    roots = [Path(os.environ[RESCUE_ENV])] if os.environ.get(RESCUE_ENV) else []
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    roots += [cache / "loratop" / "rescued", Path(tempfile.gettempdir()) / "loratop-rescued"]
    return roots


def new_rescue_dir(root: Path, name: str) -> Path:
    """A new, empty folder ``root/name`` (``name-2``, ``name-3``, ... when taken).

    Raises:
        OSError: ``root`` cannot be made or written.
    """
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = root / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{root}: {name}-2 ... {name}-999 are all taken")
