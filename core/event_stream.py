"""Where a watcher's events come from: the trainer's pipe, or ``events.jsonl`` followed live.

Both hand out events in ``seq`` order. The pipe may skip events (the trainer leaves
them off a full pipe rather than block a step); a gap is filled from the file, which
always has every event. Lines that are not valid events are skipped and counted.
Blocking reads: run these on a worker thread, never on the UI loop.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

from loratop.core import events as ev

Event = dict[str, Any]


class PipeStream:
    """Events from the pipe's read end, in order, gaps filled from ``events.jsonl``.

    The file is read forward only, from where the last gap left off: a long run with a slow
    reader costs one pass over the file in all, not one per gap.
    """

    def __init__(self, fd: int, events_path: Path) -> None:
        self._fd = fd
        self._path = events_path
        self._decoder = ev.Decoder()
        self._file = FileFollower(events_path)
        self._ahead: deque[Event] = deque()
        """Events read from the file beyond the last gap: the pipe brings most of them again."""
        self.next_seq = 0
        """The ``seq`` expected next."""
        self.filled_from_file = 0
        """Events that did not come through the pipe and were read from the file."""

    @property
    def skipped(self) -> int:
        """Lines on the pipe that were not valid events."""
        return self._decoder.skipped

    @property
    def file_bytes_read(self) -> int:
        """How much of ``events.jsonl`` has been read to fill gaps."""
        return self._file.offset

    def read(self) -> list[Event] | None:
        """Block for the next chunk; ``None`` at end of stream (the trainer closed its end)."""
        chunk = os.read(self._fd, 65536)
        if not chunk:
            return None
        return self._in_order(self._decoder.feed(chunk))

    def rest_from_file(self) -> list[Event]:
        """Whatever the file holds beyond what was seen (call after the pipe closed)."""
        missing = self._from_file(self.next_seq, None)
        self.filled_from_file += len(missing)
        if missing:
            self.next_seq = missing[-1]["seq"] + 1
        return missing

    def _in_order(self, events: list[Event]) -> list[Event]:
        result = []
        for event in events:
            seq = event["seq"]
            if seq < self.next_seq:
                continue  # already had it (from the file)
            if seq > self.next_seq:
                gap = self._from_file(self.next_seq, seq)
                self.filled_from_file += len(gap)
                result += gap
            result.append(event)
            self.next_seq = seq + 1
        return result

    def _from_file(self, start: int, stop: int | None) -> list[Event]:
        """The file's events with ``start <= seq < stop`` (``stop`` None: all from ``start``)."""
        while self._ahead and self._ahead[0]["seq"] < start:
            self._ahead.popleft()
        if stop is None or not self._ahead or self._ahead[-1]["seq"] < stop - 1:
            self._ahead.extend(e for e in self._file.poll() if e["seq"] >= start)
        found = []
        while self._ahead and (stop is None or self._ahead[0]["seq"] < stop):
            found.append(self._ahead.popleft())
        return found


class FileFollower:
    """Reads ``events.jsonl`` from the start, then whatever is appended (``tail -f``)."""

    def __init__(self, events_path: Path, offset: int = 0) -> None:
        """Follow ``events_path`` from byte ``offset`` (the end of a line) on."""
        self._path = events_path
        self._offset = offset
        self._decoder = ev.Decoder()

    @property
    def skipped(self) -> int:
        """Lines in the file that were not valid events."""
        return self._decoder.skipped

    def poll(self) -> list[Event]:
        """The complete events appended since the last call (a partial last line waits)."""
        try:
            with self._path.open("rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        return self._decoder.feed(chunk) if chunk else []

    @property
    def offset(self) -> int:
        """Bytes of the file read so far."""
        return self._offset
