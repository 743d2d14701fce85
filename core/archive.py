"""Archive or delete a run folder (the home screen's ``a`` and ``d``), never one that trains.

Archiving moves the folder into ``archive/`` beside the runs (``runs/archive/NAME``): out of
the list, its files untouched, back with a ``mv``. Deleting removes the folder for good. A run
whose trainer still holds its ``trainer.lock``, or whose ``status.json`` proves its trainer
alive (or starting), is refused; the lock is held while the folder moves or goes, so no
trainer can take it meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from loratop.core.run_dir import EVENTS, LOCK, LOST, has_finished, read_status
from loratop.core.run_state import PAUSED, RUNNING
from loratop.core.runs import ARCHIVE, trainer_verdict


class RunIsLive(Exception):
    """The run's trainer is alive (or starting): its folder is neither archived nor deleted."""


class CannotArchive(Exception):
    """The run cannot be moved into the archive (the message says why); nothing was moved."""


def archive_dir(root: Path) -> Path:
    """Where the runs under ``root`` are archived: ``root/archive``."""
    return root / ARCHIVE


def archived_runs(root: Path) -> list[Path]:
    """The archived run folders under ``root``, by name (empty when there is no archive)."""
    try:
        return sorted(p for p in archive_dir(root).iterdir() if (p / EVENTS).is_file())
    except OSError:
        return []


def why_live(run_dir: Path) -> str | None:
    """Why the run must not be archived or deleted (its trainer is alive or starting), or ``None``."""
    try:
        with _held(run_dir):
            return None
    except RunIsLive as exc:
        return str(exc)


@contextlib.contextmanager
def _held(run_dir: Path) -> Iterator[None]:
    """Hold the run's ``trainer.lock`` (when it has one) while the body runs: no trainer then
    trains there, nor can start to.

    Raises:
        RunIsLive: a trainer holds the lock, or ``status.json`` proves one alive or starting.
    """
    fd = _open_lock(run_dir)
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunIsLive(f"{run_dir.name} is training: its trainer holds {LOCK}") from None
        status = read_status(run_dir) or {}
        # Ended (a script that embeds the trainer lives on after its run): only the lock counts.
        if status.get("state") not in ("finished", LOST) and not has_finished(run_dir):
            verdict, _ = trainer_verdict(status)
            if verdict in (RUNNING, PAUSED):
                pid = status.get("pid")
                who = f"its trainer (pid {pid}) is alive" if pid is not None else "it is starting"
                raise RunIsLive(f"{run_dir.name} is training: {who}")
        yield
    finally:
        if fd is not None:
            os.close(fd)  # the lock goes with it


def _open_lock(run_dir: Path) -> int | None:
    """The run's lock file, opened to be locked; ``None`` when it has none (or it is no plain
    file: a symbolic link is never followed)."""
    try:
        return os.open(run_dir / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return None
        raise


def archive_run(run_dir: Path, root: Path) -> Path:
    """Move a run folder into ``root/archive/`` (made when missing).

    Returns:
        Where it went (``root/archive/NAME``).

    Raises:
        RunIsLive: its trainer is alive or starting.
        CannotArchive: the archive holds a run of that name already, or is itself a run.
        OSError: the move failed (nothing was moved).
    """
    target_dir = archive_dir(root)
    if (target_dir / EVENTS).exists():
        raise CannotArchive(f"{target_dir} is a run itself, not an archive: move it away to archive runs")
    target = target_dir / run_dir.name
    with _held(run_dir):
        target_dir.mkdir(exist_ok=True)
        if target.exists() or target.is_symlink():
            raise CannotArchive(f"{target} exists already: rename one of the two to archive this run")
        run_dir.rename(target)  # one folder, one file system: the same files, and back with a mv
    return target


def delete_run(run_dir: Path) -> None:
    """Remove a run folder and every file in it, for good.

    Raises:
        RunIsLive: its trainer is alive or starting (nothing was removed).
        OSError: it could not be removed (whatever could not be removed is still there).
    """
    with _held(run_dir):
        shutil.rmtree(run_dir)
