"""Where the trainer's events go: a durable file and a pipe that never blocks training.

Every event is appended to ``events.jsonl`` (flushed at once; the source of truth)
and offered to the watcher's pipe. The pipe is non-blocking: when the reader is slow,
lines wait in a bounded buffer and are sent at the next event; when the buffer is
full, events are left off the pipe (the reader sees a ``seq`` gap and fills it from
the file); when the reader is gone, the pipe is closed and training goes on.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from loratop.trainer.events import encode


class EventSink:
    """Thread-safe emitter of protocol events (the training loop and the sampler share it).

    Args:
        events_path: ``events.jsonl`` in the run folder; appended to.
        pipe_fd: The write end of the watcher's pipe, or ``None`` when nobody watches.
        max_pending: Bytes allowed to wait for a slow reader before events are left
            off the pipe.
    """

    def __init__(self, events_path: Path, pipe_fd: int | None = None, max_pending: int = 1 << 20) -> None:
        self._file = open(events_path, "ab")  # noqa: SIM115 - lives as long as the run
        self._lock = threading.Lock()
        self._seq = 0
        self._pipe_fd = pipe_fd
        self._pending = bytearray()
        self._max_pending = max_pending
        self.pipe_skipped = 0
        """Events left off the pipe because the reader was too slow (still in the file)."""
        self.pipe_closed_reason: str | None = None
        """Why the pipe was closed early (the reader went away), or ``None``."""
        if pipe_fd is not None:
            os.set_blocking(pipe_fd, False)

    @property
    def seq(self) -> int:
        """The ``seq`` the next event will carry (= events emitted so far)."""
        return self._seq

    def emit(self, type_: str, **fields: Any) -> None:
        """Write one event to the file, then offer it to the pipe without blocking."""
        with self._lock:
            line = encode(self._seq, type_, fields)
            self._seq += 1
            self._file.write(line)
            self._file.flush()
            self._offer(line)

    def _offer(self, line: bytes) -> None:
        if self._pipe_fd is None:
            return
        if len(self._pending) + len(line) > self._max_pending:
            self.pipe_skipped += 1
        else:
            self._pending += line
        self._drain()

    def _drain(self) -> None:
        assert self._pipe_fd is not None
        while self._pending:
            try:
                written = os.write(self._pipe_fd, self._pending)
            except BlockingIOError:
                return  # reader is behind; try again at the next event
            except OSError as exc:  # EPIPE: reader gone (SIGPIPE is ignored by Python)
                self._close_pipe(f"{type(exc).__name__}: {exc.strerror or exc}")
                return
            del self._pending[:written]

    def _close_pipe(self, reason: str | None) -> None:
        if self._pipe_fd is None:
            return
        with contextlib.suppress(OSError):
            os.close(self._pipe_fd)
        self._pipe_fd = None
        self._pending.clear()
        if reason:
            self.pipe_closed_reason = reason

    def close(self) -> None:
        """Send what is still pending (without blocking), then close the pipe and the file."""
        with self._lock:
            if self._pipe_fd is not None:
                self._drain()
            self._close_pipe(None)
            self._file.close()
