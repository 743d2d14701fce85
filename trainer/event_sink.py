"""Where the trainer's events go: a durable file and a pipe that never blocks training.

Every event is appended to ``events.jsonl`` (flushed at once; the source of truth)
and offered to the watcher's pipe. The pipe is non-blocking: when the reader is slow,
lines wait in a bounded buffer and are sent at the next event; when the buffer is
full, events are left off the pipe (the reader sees a ``seq`` gap and fills it from
the file); when the reader is gone, the pipe is closed and training goes on.

The file never keeps a torn line: a write that fails part-way (a full disk) is cut back
to the last whole line, and a file that ends mid-line when it is opened (a crash of an
earlier writer) is repaired first. Once a write fails, events are kept in memory
(:attr:`EventSink.unwritten`) and still offered to the pipe; the run decides what to do
(see ``write_error``) and where to put them (:meth:`EventSink.flush_unwritten`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from loratop.core.events import encode
from loratop.core.run_index import IndexWriter


class Sink(Protocol):
    """Where a trainer's events go, as the code that emits them sees it: an :class:`EventSink`,
    a :class:`BackgroundSink` (a script's callback) or the ``NullSink`` of ranks other than 0."""

    @property
    def write_error(self) -> OSError | None:
        """The error that stopped writes to ``events.jsonl``; ``None`` while they succeed."""
        ...

    @property
    def disk_full(self) -> bool:
        """Whether :attr:`write_error` is a full disk (or quota)."""
        ...

    def emit(self, type_: str, **fields: Any) -> None:
        """Record one event (never raises into training)."""
        ...


class RunSink(Sink, Protocol):
    """The sink a launched run (``train.Run``) owns: it also decides where unwritten events go
    and closes the file."""

    @property
    def indexed(self) -> bool:
        """Whether the compact index beside ``events.jsonl`` is kept."""
        ...

    @property
    def unwritten(self) -> list[bytes]:
        """Lines that could not go to the file since :attr:`write_error`."""
        ...

    def flush_unwritten(self) -> bool:
        """Write :attr:`unwritten` now; whether all of it is in the file."""
        ...

    def written_bytes(self) -> bytes:
        """What this sink wrote to the file."""
        ...

    def close(self) -> None:
        """Close the file and the pipe."""
        ...


class EventSink:
    """Thread-safe emitter of protocol events (the training loop and the sampler share it).

    Args:
        events_path: ``events.jsonl`` in the run folder; appended to.
        pipe_fd: The write end of the watcher's pipe, or ``None`` when nobody watches.
        max_pending: Bytes allowed to wait for a slow reader before events are left
            off the pipe.
        start_seq: The ``seq`` of the first event (the next one of a file another writer began).
    """

    def __init__(
        self, events_path: Path, pipe_fd: int | None = None, max_pending: int = 1 << 20, start_seq: int = 0
    ) -> None:
        self._fd: int | None = os.open(events_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = repair_torn_tail(self._fd)
        self._index = IndexWriter(events_path.parent) if self._size == 0 else None
        """The compact record beside the file (:mod:`core.run_index`), for a fresh file only."""
        self._lock = threading.Lock()
        self._seq = start_seq
        """Past 0 when appending to a run another writer began (torchrun's agent after rank 0)."""
        self._pipe_fd = pipe_fd
        self._pending = bytearray()
        self._max_pending = max_pending
        self.pipe_skipped = 0
        """Events left off the pipe because the reader was too slow (still in the file)."""
        self.pipe_closed_reason: str | None = None
        """Why the pipe was closed early (the reader went away), or ``None``."""
        self.write_error: OSError | None = None
        """The first failed write to the file (``ENOSPC``: the disk is full), or ``None``."""
        self.unwritten: list[bytes] = []
        """Lines that could not go to the file since :attr:`write_error`, in ``seq`` order (at
        most :data:`MAX_UNWRITTEN`: a run that trains on past a full disk drops the oldest)."""
        self.lost = 0
        """Lines dropped for good: past :data:`MAX_UNWRITTEN`, or with no room at the end."""
        if pipe_fd is not None:
            os.set_blocking(pipe_fd, False)

    @property
    def seq(self) -> int:
        """The ``seq`` the next event will carry (= events emitted so far)."""
        return self._seq

    @property
    def indexed(self) -> bool:
        """Whether the compact index beside the file (:mod:`core.run_index`) holds every event
        written so far (it ends at the first failed write, and is kept for a fresh file only)."""
        return self._index is not None and self._index.failed is None

    @property
    def disk_full(self) -> bool:
        """Whether writing the file failed because the disk (or the quota) is full."""
        return self.write_error is not None and self.write_error.errno in DISK_FULL_ERRNOS

    def emit(self, type_: str, *, at: float | None = None, **fields: Any) -> None:
        """Write one event to the file (or keep it, once the file cannot be written), then offer
        it to the pipe without blocking. Never raises for a failed write.

        ``at``: when the event happened (its ``t``), if earlier than now (a queued event)."""
        with self._lock:
            t = time.time() if at is None else at
            line = encode(self._seq, type_, fields, t)
            self._seq += 1
            if self.write_error is not None or self._fd is None:  # closed: a sampler that outlived close()
                self._keep(line)
            elif self._write(line) and self._index is not None:
                self._index.add(line, self._size, {"seq": self._seq - 1, "t": t, "type": type_, **fields})
            self._offer(line)

    def _write(self, line: bytes) -> bool:
        """Append one whole line, or none of it (then keep it in :attr:`unwritten`)."""
        assert self._fd is not None
        try:
            written = 0
            while written < len(line):  # a short write (the disk filling) is retried: it then fails
                written += os.write(self._fd, line[written:])
        except OSError as exc:
            self.write_error = exc
            self._keep(line)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # never leave half a line behind
            if self._index is not None:  # from here on the index would have a hole: it ends here
                self._index.close()
                self._index = None
            return False
        self._size += len(line)
        return True

    def _keep(self, line: bytes) -> None:
        self.unwritten.append(line)
        if len(self.unwritten) > MAX_UNWRITTEN:
            drop = len(self.unwritten) - MAX_UNWRITTEN // 2  # in halves: no list shift per event
            del self.unwritten[:drop]
            self.lost += drop

    def land_unwritten(self, make_room: list[Any]) -> bool:
        """At the end, after the file could not be written: write the kept lines, calling each
        of ``make_room`` in turn (freeing a reserve) until they fit. When they do not, the
        older ones are dropped (counted in :attr:`lost`) so the last line — ``run_finished`` —
        still lands. Returns whether the last line was written."""
        if self.flush_unwritten():
            return True
        for i, free in enumerate(make_room):
            free()
            if self.flush_unwritten():
                return True
            if i < len(make_room) - 1:  # the last room is for the last line
                with self._lock:
                    self.lost += max(0, len(self.unwritten) - 1)
                    self.unwritten = self.unwritten[-1:]
        return False

    def flush_unwritten(self) -> bool:
        """Try again to append the kept lines (after room was made). Returns whether all went."""
        with self._lock:
            if self._fd is None:
                return not self.unwritten
            lines, self.unwritten, self.write_error = self.unwritten, [], None
            for i, line in enumerate(lines):
                self._write(line)
                if self.write_error is not None:
                    self.unwritten = self.unwritten[-1:] + lines[i + 1 :]
                    return False
            return True

    def written_bytes(self) -> bytes:
        """What the file holds: whole lines only, also when the file itself is gone (unlinked
        with its folder), since it is read through our own descriptor."""
        with self._lock:
            if self._fd is None:
                return b""
            return _read_all(self._fd, self._size)

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
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._index is not None:
                self._index.close()


class BackgroundSink:
    """An :class:`EventSink` written by a thread of its own: ``emit`` only queues the event
    (with its time), so a training step never waits for a slow or stalled disk.

    For a script's ``LoratopCallback``, whose steps are someone else's to keep fast. The
    events keep their order and times; :meth:`close` writes what is queued (waiting up to
    ``close_timeout`` seconds for the disk) and closes the file.

    Args:
        sink: The sink the thread writes through.
        close_timeout: Seconds :meth:`close` waits for the queue to be written.
    """

    def __init__(self, sink: EventSink, close_timeout: float = 10.0) -> None:
        self._sink = sink
        self._close_timeout = close_timeout
        self._queue: deque[tuple[str, dict[str, Any], float]] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._write_queued, name="loratop-events", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Events waiting for the disk."""
        return len(self._queue)

    @property
    def write_error(self) -> OSError | None:
        return self._sink.write_error

    @property
    def disk_full(self) -> bool:
        return self._sink.disk_full

    @property
    def indexed(self) -> bool:
        return self._sink.indexed

    def emit(self, type_: str, **fields: Any) -> None:
        """Queue one event; never waits for the disk, never raises."""
        with self._ready:
            self._queue.append((type_, fields, time.time()))
            self._ready.notify()

    def _write_queued(self) -> None:
        retried = time.monotonic()
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    return
                type_, fields, t = self._queue.popleft()
            if self._sink.write_error is not None and time.monotonic() - retried > RETRY_FULL_DISK_S:
                retried = time.monotonic()
                self._sink.flush_unwritten()  # room may have been made since: what was kept lands
            self._sink.emit(type_, at=t, **fields)

    @property
    def lost(self) -> int:
        """Events dropped for good (the disk stayed full)."""
        return self._sink.lost

    def close(self, make_room: list[Any] | None = None) -> None:
        """Write what is queued (up to ``close_timeout`` seconds), then close the sink. After a
        full disk, ``make_room`` (callables that free space, in turn) lets the kept events and
        the last one land (:meth:`EventSink.land_unwritten`)."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join(self._close_timeout)
        if not self._thread.is_alive():
            if self._sink.write_error is not None:
                self._sink.land_unwritten(make_room or [])
            self._sink.close()


MAX_UNWRITTEN = 200_000
"""Lines kept in memory after the file could not be written (tens of MB at most)."""
RETRY_FULL_DISK_S = 30.0
"""How often a :class:`BackgroundSink` tries the file again after a failed write."""

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""A write failed because there is no room: the disk, or this user's quota, is full."""


def repair_torn_tail(fd: int) -> int:
    """Cut a file that ends mid-line back to its last whole line (an earlier writer crashed
    mid-write, or met a full disk). Returns the file's size afterwards."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    keep = size
    while keep > 0:
        start = max(0, keep - 65536)
        chunk = os.pread(fd, keep - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            keep = start + cut + 1
            break
        keep = start
    os.ftruncate(fd, keep)
    return keep


def _read_all(fd: int, size: int) -> bytes:
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, min(1 << 20, size - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
