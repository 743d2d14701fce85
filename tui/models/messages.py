"""Messages the dashboard's workers post to its screens (facts, past tense)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from loratop.core.run_state import RunState


@dataclass
class EventsArrived(Message):
    """A batch of events, in ``seq`` order, read from the pipe or the file."""

    events: list[dict[str, Any]]
    garbage: int
    """Total lines skipped so far by the source (not just in this batch)."""
    filled_from_file: int
    """Total events so far that were read from ``events.jsonl`` to fill pipe gaps."""


@dataclass
class Replayed(Message):
    """A run's events so far, folded at once on a worker thread (attach): the state replaces
    the screen's own; what is appended later arrives as :class:`EventsArrived`."""

    state: RunState


@dataclass
class TrainerGone(Message):
    """The trainer is proven gone without a ``run_finished`` event (killed or crashed hard)."""

    cause: str
    """How, as far as is known: ``killed by SIGKILL``, ``trainer gone, no report``."""
    exit_code: int | None = None
    """Its exit code, when this dashboard launched it (negative: killed by that signal)."""


@dataclass
class TrainerNotProven(Message):
    """Whether the trainer runs cannot be told from this machine (``why``), or can again (``None``)."""

    why: str | None


@dataclass
class TrainerPaused(Message):
    """The live trainer is stopped (SIGSTOP, Ctrl-Z, a debugger): ``why`` says how to resume it;
    ``None`` once it runs again."""

    why: str | None


@dataclass
class FolderRemoved(Message):
    """The run folder was removed while this dashboard followed it; ``note`` says what of the trainer."""

    note: str


@dataclass
class WatchFailed(Message):
    """The run's watcher stopped on an error no reader check foresaw (an unreadable file, say):
    the screen says so, instead of a header that reads STARTING forever."""

    error: Exception
