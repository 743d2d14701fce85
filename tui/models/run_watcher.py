"""One run watched: its events and its trainer's fate, read on a thread and posted as messages.

The App owns one :class:`RunWatcher` per run's monitor (toolong's ``Watcher``: started when the
screen mounts, closed when it goes or the App exits). The watcher reads the trainer's pipe
(gaps filled from ``events.jsonl``), or follows ``events.jsonl``; it reaps the trainer this
dashboard launched, looks at ``status.json`` every second (running, paused, not provable from
here, gone), notices a removed run folder, and records a lost trainer in ``status.json``. All
of it reaches the screen as the messages of :mod:`loratop.tui.models.messages`; the screen
only folds them into its :class:`~loratop.core.run_state.RunState` and draws.

The watcher never signals the trainer: stopping the watcher (a screen popped, a dropped SSH
session, a detach) leaves the run training.
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.message import Message

from loratop.core import events as ev
from loratop.core.event_stream import FileFollower, PipeStream
from loratop.core.run_dir import (
    EVENTS,
    LOST,
    NO_REPORT,
    exit_cause,
    proven_trainer_pid,
    read_status,
    record_lost,
    rescue_roots,
)
from loratop.core.run_state import PAUSED
from loratop.core.run_summary import fold_run, settle_finished_run
from loratop.core.runs import trainer_verdict
from loratop.tui.models.messages import (
    EventsArrived,
    FolderRemoved,
    Replayed,
    TrainerGone,
    TrainerNotProven,
    TrainerPaused,
    WatchFailed,
)

ALIVE_CHECK_S = 1.0
"""How often a followed run's ``status.json`` is read (is its trainer running, paused, gone)."""
POLL_S = 0.2
"""How often ``events.jsonl`` is looked at for what was appended, while following it."""


class RunWatcher:
    """Reads one run's events on its own thread and posts them, with its trainer's fate, to ``post``.

    ``post`` is the screen's ``post_message`` (safe to call from any thread). Start it with
    :meth:`start`; :meth:`stop` ends the thread soon after (within a poll), without a signal
    to the trainer.
    """

    def __init__(
        self,
        run_dir: Path,
        post: Callable[[Message], object],
        pipe_fd: int | None = None,
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        """Watch ``run_dir``: through ``pipe_fd`` when this dashboard launched it, else by following its file.

        Args:
            run_dir: The run folder.
            post: Where the messages go (the screen that shows the run).
            pipe_fd: The read end of the trainer's events pipe; the watcher closes it.
            process: The trainer, when this dashboard launched it: reaped when it exits (no
                zombie), its exit code naming the cause when it sent no report.
        """
        self.run_dir = run_dir
        self._post = post
        self._pipe_fd = pipe_fd
        self._process = process
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{run_dir.name}", daemon=True)
        self._finished = False
        """Whether a ``run_finished`` event was posted (then the trainer is not lost)."""
        self._last_step: int | None = None
        self._last_t: float | None = None

    @property
    def thread(self) -> threading.Thread:
        """The thread that reads (alive from :meth:`start` until it is done or stopped)."""
        return self._thread

    def start(self) -> None:
        """Start reading, on the watcher's own thread."""
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop reading (within a poll); wait up to ``timeout`` seconds for the thread to end.

        The trainer goes on: it is never signalled here. One this dashboard launched that still
        runs is reaped when it exits, by a thread that only waits.
        """
        self._stopping.set()
        if timeout is not None and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    # -- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._watch()
        except Exception as exc:  # a run's files no reader check foresaw: said on screen
            self._post(WatchFailed(exc))
        finally:
            if self._pipe_fd is not None:
                os.close(self._pipe_fd)
                self._pipe_fd = None
            process = self._process
            if process is not None and process.poll() is None:
                # Stopped while our trainer trains on: it is reaped when it exits, never signalled.
                threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()

    def _send(self, message: Message) -> None:
        """Post ``message``, keeping what recording a lost trainer needs (its last step and time)."""
        if isinstance(message, EventsArrived):
            for event in message.events:
                t = event.get("t")
                if isinstance(t, (int, float)):
                    self._last_t = float(t)
                if event["type"] == ev.STEP and isinstance(event.get("step"), int):
                    self._last_step = event["step"]
                if event["type"] == ev.RUN_FINISHED:
                    self._finished = True
        elif isinstance(message, Replayed):
            state = message.state
            self._last_step, self._last_t = state.last_step, state.last_t
            self._finished = state.finished is not None
        self._post(message)

    def _watch(self) -> None:
        """Read the pipe (then the file's rest), or follow the file; post batches."""
        path = self.run_dir / EVENTS
        if self._pipe_fd is not None:
            stream = PipeStream(self._pipe_fd, path)
            try:
                self._read_pipe(stream)
                rest = stream.rest_from_file()
                self._send(EventsArrived(rest, stream.skipped, stream.filled_from_file))
            finally:
                os.close(self._pipe_fd)
                self._pipe_fd = None
            if self._process is not None and self._reap():
                return
            skip_to, offset = stream.next_seq, stream.file_bytes_read
        else:
            skip_to, offset = 0, 0
        self._follow_file(path, skip_to, offset)

    def _read_pipe(self, stream: PipeStream) -> None:
        """Until the pipe closes, or our trainer is gone and what it wrote has been read (a
        process it started may hold the pipe open after it was killed)."""
        assert self._pipe_fd is not None
        exited = False
        while not self.stopping:
            ready, _, _ = select.select([self._pipe_fd], [], [], 0 if exited else 0.25)
            if not ready:
                if exited:
                    return
                exited = self._process is not None and self._process.poll() is not None
                continue
            batch = stream.read()
            if batch is None:
                return
            if batch:
                self._send(EventsArrived(batch, stream.skipped, stream.filled_from_file))

    def _reap(self) -> bool:
        """Wait for our trainer to exit once its pipe closed (it is finishing), so it is no zombie;
        an exit without a report is recorded as a lost trainer, its exit code naming the cause.

        Returns:
            Whether it exited (else the watcher was stopped first).
        """
        assert self._process is not None
        while not self.stopping:
            try:
                code = self._process.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                continue
            if not self._finished:
                self._lost(exit_cause(code), code)
            return True
        return False

    def _lost(self, cause: str, exit_code: int | None = None) -> None:
        """The trainer is proven gone without a report: recorded in ``status.json``, and said."""
        record_lost(
            self.run_dir,
            cause,
            last_step=self._last_step or 0,
            ended_at=self._last_t,
            **({"exit_code": exit_code} if exit_code is not None else {}),
        )
        self._send(TrainerGone(cause, exit_code))

    def _follow_file(self, path: Path, skip_to: int, offset: int = 0) -> None:
        """Follow ``events.jsonl``: after the pipe, from ``offset`` (what filling its gaps read)
        for events from ``skip_to`` on; else (attach) the whole run at once, then the rest."""
        if skip_to == 0:  # attach: the whole run at once (from its index), then what is appended
            # A finished run without an index (an older loratop's) gets it on the way: its
            # caches are settled below from that, not from a second read of every event.
            state, offset = fold_run(self.run_dir, cache=True)
            self._send(Replayed(state))
        follower = FileFollower(path, offset)
        last_alive_check = 0.0
        not_proven: str | None = None
        paused: str | None = None
        status: dict[str, Any] = {}
        while not self.stopping:
            batch = [e for e in follower.poll() if e["seq"] >= skip_to]
            if batch:
                self._send(EventsArrived(batch, follower.skipped, 0))
            if self._finished:
                settle_finished_run(self.run_dir)  # seen to end here: its caches, for ls (kept if good)
                return
            now = time.monotonic()
            if now - last_alive_check > ALIVE_CHECK_S:
                last_alive_check = now
                status = read_status(self.run_dir) or status  # the last one read, should the folder go
                if not path.exists():
                    self._follow_removed_folder(status)
                    return
                verdict, why = trainer_verdict(status)
                paused_now = why if verdict == PAUSED else None
                if paused_now != paused:
                    paused = paused_now
                    self._send(TrainerPaused(paused))
                if verdict == LOST:
                    final = [e for e in follower.poll() if e["seq"] >= skip_to]
                    if final:
                        self._send(EventsArrived(final, follower.skipped, 0))
                    if not self._finished:
                        self._lost(why or NO_REPORT)
                    return
                if why != not_proven:  # cannot tell from here: say why, and keep following
                    not_proven = why
                    self._send(TrainerNotProven(why))
            self._stopping.wait(POLL_S)

    def _follow_removed_folder(self, status: dict[str, Any]) -> None:
        """The run folder is gone: say what of its trainer, from the status last read, until it exits."""
        pid = proven_trainer_pid(status)
        rescue = " or ".join(f"{root}/" for root in rescue_roots())  # the first of them that takes it
        if pid is None:
            self._send(FolderRemoved(f"run folder removed; its trainer is not running (look under {rescue})"))
            return
        self._send(
            FolderRemoved(
                f"run folder removed; trainer pid {pid} still running: it stops at the next step "
                f"and saves its adapter under {rescue}"
            )
        )
        while not self.stopping and proven_trainer_pid(status) is not None:
            self._stopping.wait(0.5)
        if not self.stopping:
            self._send(FolderRemoved(f"run folder removed; the trainer (pid {pid}) has exited: look under {rescue}"))
