"""What a line of the trainer's log (``trainer.log``) is: the Trainer's per-step metrics
printout, a warning known to be harmless, or anything else.

The monitor's log pane labels the harmless warnings (never hides them) and keeps the metrics
printout to one row a step; ``--no-tui`` leaves the printout out of a lost trainer's last lines.
The warnings were read off real CPU runs of the demo (bitsandbytes 0.50, transformers 5) and
the libraries' sources; each note says why it does not matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

METRICS_PRINTOUT = re.compile(r"^\{'[A-Za-z_]\w*': .*\}$")
"""The Trainer's printout of what it logged, one dict a step (``{'loss': '5.519', 'grad_norm': ...}``):
the figures loratop's chart and step lines already show."""
PROGRESS_BAR = re.compile(r"\d+%\|.*\| *[\d.]+[kMG]?/[\d.]+[kMG]? \[")
"""A tqdm progress bar's state (``Tokenizing train dataset:  13%|█▎   | 364/2850 [00:00<...``)."""


@dataclass(frozen=True)
class KnownWarning:
    """A library warning known not to matter, and why."""

    text: str
    """A piece of its message, as the library writes it."""
    note: str
    """Why it does not matter, shown before it."""


HARMLESS: tuple[KnownWarning, ...] = (
    KnownWarning(
        "Failed to load CPU gemm_4bit_forward from kernels-community",
        "harmless: bitsandbytes runs its built-in CPU kernel (the hub's optional one is not fetched)",
    ),
    KnownWarning(
        "Paged optimizers are not supported on CPU",
        "expected on CPU, harmless: nothing is paged without a GPU",
    ),
    KnownWarning(
        "'pin_memory' argument is set as true but no accelerator is found",
        "expected on CPU, harmless: no GPU to pin memory for",
    ),
    KnownWarning(
        "FutureWarning: `gradient_checkpointing",
        "harmless for this run: a deprecation notice",
    ),
    KnownWarning(
        "FutureWarning: `is_gradient_checkpointing` is deprecated",
        "harmless for this run: a deprecation notice",
    ),
)
"""Warnings every CPU run of the demo writes (and some GPU runs), with what they mean."""

PLAIN = "plain"
METRICS = "metrics"
KNOWN = "known"
SOURCE = "source"
"""The source line Python's ``warnings`` prints, indented, under a known warning."""


@dataclass(frozen=True)
class LogLine:
    """One line of ``trainer.log``, and what it is."""

    text: str
    kind: str = PLAIN
    """:data:`PLAIN`, :data:`METRICS`, :data:`KNOWN` or :data:`SOURCE`."""
    note: str | None = None
    """For :data:`KNOWN`: why it does not matter."""


def is_metrics_printout(line: str) -> bool:
    """Whether ``line`` is the Trainer's printout of one step's logged figures."""
    return line.startswith("{'") and METRICS_PRINTOUT.match(line) is not None


def is_progress_bar(line: str) -> bool:
    """Whether ``line`` (its latest ``\\r`` state) is a tqdm progress bar."""
    return PROGRESS_BAR.search(line.rsplit("\r", 1)[-1]) is not None


def telling_lines(lines: list[str]) -> tuple[list[str], int]:
    """Of a log's last ``lines``, those that may say why a trainer died (a library's last words),
    and how many others were left out: per-step printouts, progress bars, known-harmless
    warnings with their source lines, blank lines."""
    reader, kept = LogReader(), []
    for line in lines:
        kind = reader.read(line).kind
        if kind == PLAIN and line.strip() and not is_progress_bar(line):
            kept.append(line)
    return kept, len(lines) - len(kept)


def known_warning(line: str) -> KnownWarning | None:
    """The harmless warning ``line`` is, if it is one."""
    return next((known for known in HARMLESS if known.text in line), None)


class LogReader:
    """Tells the lines of ``trainer.log`` apart, in order (a warning's source line, printed
    indented under it, goes with it)."""

    def __init__(self) -> None:
        self._after_known = False

    def read(self, line: str) -> LogLine:
        """What ``line``, the next line of the log, is."""
        after_known, self._after_known = self._after_known, False
        if after_known and line.startswith("  ") and line.strip():
            return LogLine(line, SOURCE)
        if is_metrics_printout(line):
            return LogLine(line, METRICS)
        known = known_warning(line)
        if known is not None:
            self._after_known = True
            return LogLine(line, KNOWN, known.note)
        return LogLine(line)
