"""Where a watcher's events come from: the trainer's pipe, or ``events.jsonl`` followed live.

Both hand out events in ``seq`` order. The pipe may skip events (the trainer leaves
them off a full pipe rather than block a step); a gap is filled from the file, which
always has every event. Lines that are not valid events are skipped and counted.
Blocking reads: run these on a worker thread, never on the UI loop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loratop.trainer import events as ev

Event = dict[str, Any]


class PipeStream:
    """Events from the pipe's read end, in order, gaps filled from ``events.jsonl``."""

    def __init__(self, fd: int, events_path: Path) -> None:
        self._fd = fd
        self._path = events_path
        self._decoder = ev.Decoder()
        self.next_seq = 0
        """The ``seq`` expected next."""
        self.filled_from_file = 0
        """Events that did not come through the pipe and were read from the file."""

    @property
    def skipped(self) -> int:
        """Lines on the pipe that were not valid events."""
        return self._decoder.skipped

    def read(self) -> list[Event] | None:
        """Block for the next chunk; ``None`` at end of stream (the trainer closed its end)."""
        chunk = os.read(self._fd, 65536)
        if not chunk:
            return None
        return self._in_order(self._decoder.feed(chunk))

    def rest_from_file(self) -> list[Event]:
        """Whatever the file holds beyond what was seen (call after the pipe closed)."""
        events, _ = ev.read_events(str(self._path)) if self._path.exists() else ([], 0)
        missing = [e for e in events if e["seq"] >= self.next_seq]
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
                result += self._fill(self.next_seq, seq)
            result.append(event)
            self.next_seq = seq + 1
        return result

    def _fill(self, start: int, stop: int) -> list[Event]:
        events, _ = ev.read_events(str(self._path)) if self._path.exists() else ([], 0)
        gap = [e for e in events if start <= e["seq"] < stop]
        self.filled_from_file += len(gap)
        return gap


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
