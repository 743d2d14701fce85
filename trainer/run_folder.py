"""A launched run's folder and what happens when it can no longer be written.

:class:`RunFolder` knows the folder by identity (device and inode), so a folder removed or
replaced under a running trainer is seen as such; saves the final adapter where there is room
(the run folder, else a rescue folder from :func:`~loratop.core.run_dir.rescue_roots`); drops
a checkpoint the disk tore; and does the last writes — events kept in memory, ``status.json``,
a copy of the run in its rescue folder — none of which raises.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loratop.core import events as ev
from loratop.core.distributed import RankInfo
from loratop.core.run_dir import (
    ADAPTER,
    CONFIG,
    EVENTS,
    RESERVE_BYTES,
    STATUS,
    make_reserve,
    new_rescue_dir,
    now,
    process_identity,
    read_status,
    rescue_roots,
    write_status,
)
from loratop.core.run_summary import settle_finished_run
from loratop.preflight.config import RunConfig, dump_config
from loratop.trainer.event_sink import DISK_FULL_ERRNOS, RunSink

FOLDER_CHECK_S = 1.0
"""How often the run checks, between steps, that its folder is still there and writable."""

REMOVED = "run folder removed"


class RunFolder:
    """The run folder of one launched run, on every rank (only rank 0 writes it).

    Args:
        run_dir: The run folder (it exists).
        sink: The run's event sink.
        config: The run's config (copied into a rescue folder).
        rank: This process's place in the run.
    """

    def __init__(self, run_dir: Path, sink: RunSink, config: RunConfig, rank: RankInfo) -> None:
        self.run_dir, self.sink, self.config, self.rank = run_dir, sink, config, rank
        st = os.stat(run_dir)
        self._id = (st.st_dev, st.st_ino)
        self.rescue: Path | None = None
        """The rescue folder that took the adapter (its own folder was full or removed), if any."""

    def mark_running(self, started_at: float) -> None:
        """pid + host + boot + start time: what lets a watcher prove later that a live pid is
        still this trainer before it signals it (a pid alone may have been reused). Under
        torchrun the agent is what status.json names (it passes signals on to the ranks). Also
        sets room aside for the last words (a warning when there is none)."""
        if not self.rank.distributed:
            write_status(
                self.run_dir,
                pid=os.getpid(),
                **process_identity(os.getpid()),
                state=ev.RUNNING,
                started_at=started_at,
                ended_at=None,
            )
        elif self.rank.is_main:
            write_status(self.run_dir, rank0_pid=os.getpid(), state=ev.RUNNING, started_at=started_at)
        if self.rank.is_main and not make_reserve(self.run_dir):
            room = f"no room to set {RESERVE_BYTES >> 10} KiB aside in {self.run_dir}"
            self.sink.emit(ev.LOG, level="warning", message=f"{room}: a full disk may cut the last events")

    def problem(self) -> str | None:
        """Why the run folder can no longer be written as ours: removed (or replaced), or
        ``None`` while it is there."""
        try:
            st = os.stat(self.run_dir)
        except OSError:
            return REMOVED
        if (st.st_dev, st.st_ino) != self._id or not (self.run_dir / EVENTS).exists():
            return REMOVED
        return None

    def stop_reason(self) -> str | None:
        """Why the run must stop for its folder (a full disk, events that cannot be written, the
        folder removed), or ``None``."""
        if self.sink.write_error is not None:
            return "disk full" if self.sink.disk_full else "events.jsonl cannot be written"
        return self.problem()

    def drop_torn_checkpoint(self, step: int) -> None:
        """The disk filled while a checkpoint was written: remove it (it cannot be resumed from,
        and looks as if it could), which also gives its room to the last writes."""
        torn = self.run_dir / f"checkpoint-{step}"
        if torn.is_dir() and not (torn / "trainer_state.json").exists():  # the Trainer writes it last
            shutil.rmtree(torn, ignore_errors=True)
            self.sink.emit(ev.LOG, level="warning", message=f"removed {torn}: the disk filled while it was written")

    def save_adapter(self, trainer: Any, step: int) -> str | None:
        """Save the final adapter (of ``step``) where there is room: the run folder, else a
        rescue folder, saying where. Returns its path, or ``None`` if nowhere took it."""
        if self.config.distributed.strategy == "fsdp" and self.rank.distributed:
            return self._save_sharded_adapter(trainer, step)
        if not self.rank.is_main:
            return None  # DDP: every rank holds the same adapter; rank 0 saves it
        need = sum(p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad)
        places: list[Path] = []
        problem = self.problem()
        if problem is None and (self.sink.write_error is None or free_bytes(self.run_dir) > need + RESERVE_BYTES):
            places.append(self.run_dir)
        reasons = [] if problem is None else [f"{self.run_dir}: {problem}"]
        if self.sink.write_error is not None:
            reasons.append(f"{self.run_dir}: {self.sink.write_error.strerror or self.sink.write_error}")
        places += rescue_roots()
        for place in places:
            try:
                folder = place if place == self.run_dir else new_rescue_dir(place, self.run_dir.name)
                path = folder / ADAPTER
                try:
                    trainer.model.save_pretrained(str(path))
                except BaseException:
                    shutil.rmtree(path, ignore_errors=True)  # half an adapter is none
                    if folder != self.run_dir:
                        shutil.rmtree(folder, ignore_errors=True)
                    raise
            except Exception as exc:  # safetensors wraps its OSError; any failure means: try the next place
                reasons.append(f"{place}: {short_reason(exc)}")
                continue
            if folder != self.run_dir:
                self.rescue = folder
                why = "; ".join(reasons)
                self.sink.emit(ev.LOG, level="warning", message=f"adapter saved to {path} instead ({why})")
                print(f"loratop trainer: adapter saved to {path} ({why})", file=sys.stderr)
            self.sink.emit(ev.CHECKPOINT, step=step, path=str(path), final=True)
            return str(path)
        message = "the adapter could not be saved anywhere: " + "; ".join(reasons)
        self.sink.emit(ev.LOG, level="error", message=message)
        print(f"loratop trainer: {message}", file=sys.stderr)
        return None

    def _save_sharded_adapter(self, trainer: Any, step: int) -> str | None:
        """QLoRA-FSDP: the adapter is sharded, so every rank takes part in saving it (the
        Trainer gathers the full state dict to rank 0, which writes it)."""
        path = self.run_dir / ADAPTER
        trainer.save_model(str(path))  # FULL_STATE_DICT (see trainer_args.distributed_args): one adapter file
        if self.rank.is_main:
            self.sink.emit(ev.CHECKPOINT, step=step, path=str(path), final=True)
        return str(path)

    def finish(self, code: int, status: str, last_step: int) -> int:
        """The last writes: events kept in memory, status.json, and a copy of the run in its
        rescue folder when it has one. Each may fail (the disk is still full); none raises.
        Returns ``code``."""
        self.sink.flush_unwritten()
        if not self.rank.is_main:
            self.sink.close()
            return code
        final = {"state": "finished", "status": status, "exit_code": code, "last_step": last_step, "ended_at": now()}
        if self.problem() is None:
            try:
                write_status(self.run_dir, **final)
            except OSError as exc:
                print(f"loratop trainer: cannot write {self.run_dir / STATUS}: {exc.strerror or exc}", file=sys.stderr)
        if self.rescue is not None:
            try:
                (self.rescue / EVENTS).write_bytes(self.sink.written_bytes() + b"".join(self.sink.unwritten))
                (self.rescue / CONFIG).write_text(dump_config(self.config))
                recorded = read_status(self.run_dir) or {}
                write_status(self.rescue, **{**recorded, **final, "rescued_from": str(self.run_dir)})
            except OSError as exc:
                print(f"loratop trainer: cannot copy the run to {self.rescue}: {exc.strerror or exc}", file=sys.stderr)
        indexed = self.sink.indexed
        self.sink.close()
        if indexed and self.problem() is None:
            # The run's summary for ls and the home screen, from the index: one small file each.
            with contextlib.suppress(OSError):
                settle_finished_run(self.run_dir)
        return code


class Every:
    """Calls ``fn`` every ``interval`` seconds on a daemon thread until :meth:`stop`."""

    def __init__(self, interval: float, fn: Callable[[], None], name: str) -> None:
        self._interval, self._fn = interval, fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._fn()


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) says the disk or the quota is full."""
    for _ in range(16):  # a chain of causes, never a cycle
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True  # safetensors and others wrap the OSError in their own error
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_message(exc: BaseException | None, step: int) -> str:
    """``disk full at step N: <why>``: the error of a run that the disk ended."""
    return f"disk full at step {step}: {short_reason(exc) if exc else 'No space left on device'}"


def short_reason(exc: BaseException) -> str:
    """An error in one short line (an OSError's reason and file)."""
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def free_bytes(path: Path) -> int:
    """Free bytes on ``path``'s file system (0 when it cannot be read)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


__all__ = [
    "FOLDER_CHECK_S",
    "Every",
    "RunFolder",
    "disk_full_message",
    "free_bytes",
    "is_disk_full",
    "short_reason",
]
