"""Messages the dashboard's workers post to its screens (facts, past tense)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message


@dataclass
class EventsArrived(Message):
    """A batch of events, in ``seq`` order, read from the pipe or the file."""

    events: list[dict[str, Any]]
    garbage: int
    """Total lines skipped so far by the source (not just in this batch)."""
    filled_from_file: int
    """Total events so far that were read from ``events.jsonl`` to fill pipe gaps."""


@dataclass
class TrainerGone(Message):
    """The trainer process ended without a ``run_finished`` event (killed or crashed hard)."""
