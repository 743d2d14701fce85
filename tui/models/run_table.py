"""The run history as a table fitted to a width: ``loratop ls`` (text) and the home screen (a DataTable).

Both keep the columns that matter for the tweak loop first (:data:`KEPT_FIRST`: the run, its
status, loss and step, the knobs that tell reruns apart, the eval loss) and say which were
left out, rather than cutting a title to a stub or letting a line wrap. Narrowed, the knobs
show only what differs between the runs (what every run shares is said once, in a note), and
a name is cut in the middle (both ends kept, where run names differ) only when even the
essential columns would not fit whole.

Piped (no terminal, whatever ``COLUMNS`` says), ``ls`` prints every column and nothing is cut:
a script or a pager gets every name whole, ready for ``attach``, ``compare`` and ``export``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loratop.core.runs import ELLIPSIS
from loratop.tui.models.panels import HISTORY_COLUMNS, history_row

if TYPE_CHECKING:
    from loratop.core.runs import RunSummary

GAP = "  "
"""Between two columns of ``ls``: two spaces, so a cell may hold single spaces (``r8 α16 ...``)."""

CELL_PAD = len(GAP)
"""What a column takes besides its widest cell: ``ls``'s gap, or a DataTable cell's padding
(one column either side)."""

TITLES = {"final loss": "loss"}
"""Titles other than the column's own name: the loss column holds a running run's loss too
(``2.3101 now``), so it is not titled "final"."""

SHORT_TITLES = {"eval (best)": "eval", "peak VRAM": "vram", "GPU busy": "busy"}
"""Narrower titles for a narrowed table: whole words, never a cut stub."""

KEPT_FIRST = (
    "run", "status", "final loss", "step", "knobs", "eval (best)", "peak VRAM", "spikes", "time", "parent",
    "GPU busy", "spills",
)  # fmt: skip
"""The columns in the order they are kept when the table must narrow: what the tweak loop
needs first (which run, how it went, what was changed, the held-out loss), then the rest."""

ESSENTIAL = KEPT_FIRST[:6]
"""Worth cutting a long name in the middle for (where they say something: an eval column of
runs without held-out data is not)."""

NOT_MEASURED = frozenset({"–", "n/a", "n/a (CPU)"})
"""Cells that say nothing was measured: a column of only these goes first when narrowing."""

NARROW_CELLS = {"n/a (CPU)": "n/a"}
"""Cells spelled shorter in a narrowed table (the device's columns only: a CPU run says so in
every one of them)."""

DEVICE_COLUMNS = frozenset({"peak VRAM", "GPU busy", "spills"})

MIN_NAME = 21
"""A name is never cut shorter than this: ten characters of each end (where run names differ)."""

RUNNING_LOSS = " now"
"""After a running run's loss: its loss now, not a final one."""


def terminal_safe(text: str) -> str:
    """Text from a run (a name, a config value, an error) as a terminal shows it harmlessly:
    control characters — an escape sequence that would move the cursor, retitle the window or
    hide the rest of the line — are written out as ``\\x1b`` and the like, never sent raw."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def middle_cut(text: str, width: int) -> str:
    """``tiny-cpu-demo-…261129-075650``: keep both ends, which is where run names differ.

    ``find_run`` takes the cut name back (its head as a prefix, its tail as a suffix).
    """
    if len(text) <= width:
        return text
    head = (width - 1) // 2 + (width - 1) % 2
    return f"{text[:head]}{ELLIPSIS}{text[len(text) - (width - 1 - head) :]}"


def history_cells(run: RunSummary, spills_cpu_text: str = "n/a (CPU)") -> dict[str, str]:
    """One run's cells by column (:data:`~loratop.tui.models.panels.HISTORY_COLUMNS`): a running
    run's loss is its loss now (``2.3101 now``), never shown as a final one."""
    cells = dict(zip(HISTORY_COLUMNS, history_row(run, spills_cpu_text), strict=True))
    if run.is_running and run.last_loss is not None:
        cells["final loss"] += RUNNING_LOSS
    return cells


def title(column: str, narrowed: bool = False) -> str:
    """A column's title as the tables show it (lower case; ``ls`` prints it in capitals)."""
    name = TITLES.get(column, column)
    return SHORT_TITLES.get(column, name) if narrowed else name


def differing_knobs(labels: Sequence[str]) -> tuple[list[str], str]:
    """The knob labels (``r8 α16 lr2e-3 b8×1 all7``) with the parts every run shares left out,
    and those parts (``b8×1 all7``), for a narrowed table: what tells reruns apart stays.

    Labels are compared part by part, in place; a run without a config (``?``) is left as it
    is. Nothing is left out when fewer than two runs have knobs, or when every part is shared.
    """
    parts = [label.split(" ") for label in labels]
    full = [p for p in parts if p != ["?"]]
    if len(full) < 2 or len({len(p) for p in full}) != 1:
        return list(labels), ""
    shared = [i for i in range(len(full[0])) if len({p[i] for p in full}) == 1]
    if len(shared) == len(full[0]) or not shared:
        return list(labels), ""
    kept = [label if p == ["?"] else " ".join(x for i, x in enumerate(p) if i not in shared) for label, p in
            zip(labels, parts, strict=True)]  # fmt: skip
    return kept, " ".join(full[0][i] for i in shared)


@dataclass
class FittedTable:
    """The run history laid out for a width: which columns, titled how, holding what."""

    columns: list[str]
    """The columns shown (names from :data:`~loratop.tui.models.panels.HISTORY_COLUMNS`), in the caller's order."""
    titles: dict[str, str]
    """Each shown column's title."""
    rows: list[dict[str, str]]
    """Each run's cells as shown: names cut, knobs narrowed, where the width asked for it."""
    left_out: list[str] = field(default_factory=list)
    """The titles of the columns left out to fit, in the caller's order (empty: every column is there)."""
    shared_knobs: str = ""
    """The knobs every run shares, left out of the knobs cells (empty when the knobs are whole)."""

    def width(self, column: str) -> int:
        """The widest of a shown column's title and cells."""
        return _width(self.titles, self.rows, column)

    def notes(self, upper: bool = False) -> list[str]:
        """What a reader of a narrowed table should know: which knobs it left out, which columns.

        Args:
            upper: Name the columns in capitals, as ``ls`` titles them.
        """
        notes = []
        if self.shared_knobs:
            notes.append(f"{'KNOBS' if upper else 'knobs'}: what differs; every run has {self.shared_knobs}")
        if self.left_out:
            names = ", ".join(t.upper() if upper else t for t in self.left_out)
            notes.append(f"a wider terminal shows {names}")
        return notes


def fit_history(
    rows: Sequence[Mapping[str, str]],
    room: int | None,
    order: Sequence[str] = HISTORY_COLUMNS,
    *,
    can_cut: bool = True,
) -> FittedTable:
    """Lay out the run history in ``room`` columns.

    Args:
        rows: Each run's cells by column (:func:`history_cells`).
        room: The columns to fit in, counting :data:`CELL_PAD` for every column; ``None``: no
            limit (every column, nothing cut).
        order: The columns, in the order they are shown.
        can_cut: A name may be cut in the middle when the essential columns would not fit otherwise.

    Returns:
        The table: every column whole when it fits; else the most useful columns, with
        narrower titles and cells, the knobs narrowed to what differs, and (``can_cut``) the
        longest names cut.
    """
    whole = FittedTable(list(order), {c: title(c) for c in order}, [dict(row) for row in rows])
    if room is None or _need(whole.titles, whole.rows, order) <= room:
        return whole
    titles = {c: title(c, narrowed=True) for c in order}
    cells = [{c: NARROW_CELLS.get(row[c], row[c]) if c in DEVICE_COLUMNS else row[c] for c in order} for row in rows]
    knobs, shared = differing_knobs([row["knobs"] for row in cells]) if "knobs" in order else ([], "")
    for row, label in zip(cells, knobs, strict=False):
        row["knobs"] = label
    chosen = _choose(titles, cells, order, room)
    essential = [c for c in ESSENTIAL if c in order and (c == "run" or _says(cells, c))]
    if can_cut and "run" in order and not set(essential) <= chosen:
        for row, name in zip(cells, _cut_names(titles, cells, essential, room), strict=True):
            row["run"] = name
        chosen = _choose(titles, cells, order, room)
    shown = [c for c in order if c in chosen]
    return FittedTable(
        shown,
        {c: titles[c] for c in shown},
        [{c: row[c] for c in shown} for row in cells],
        [title(c) for c in order if c not in chosen],
        shared if "knobs" in chosen else "",
    )


def _cut_names(
    titles: Mapping[str, str], rows: Sequence[Mapping[str, str]], essential: Sequence[str], room: int
) -> list[str]:
    """The names, cut in the middle just enough for as many of the essential columns as can
    fit beside a name of :data:`MIN_NAME` (a name is not cut for a column that would not fit anyway)."""
    names = [row["run"] for row in rows]
    for kept in range(len(essential), 0, -1):
        others = sum(_width(titles, rows, c) + CELL_PAD for c in essential[:kept] if c != "run")
        name_width = room - others - CELL_PAD
        if name_width >= MIN_NAME:
            return [middle_cut(name, name_width) for name in names]
    return [middle_cut(name, MIN_NAME) for name in names]


def _says(rows: Sequence[Mapping[str, str]], column: str) -> bool:
    """Whether a column holds a measurement for any run (not only ``–`` and ``n/a``)."""
    return any(row[column] not in NOT_MEASURED for row in rows)


def _width(titles: Mapping[str, str], rows: Sequence[Mapping[str, str]], column: str) -> int:
    return max([len(titles[column]), *(len(row[column]) for row in rows)])


def _need(titles: Mapping[str, str], rows: Sequence[Mapping[str, str]], columns: Sequence[str]) -> int:
    return sum(_width(titles, rows, c) + CELL_PAD for c in columns)


def _choose(titles: Mapping[str, str], rows: Sequence[Mapping[str, str]], order: Sequence[str], room: int) -> set[str]:
    """The columns that fit in ``room``, taken in :data:`KEPT_FIRST` order (those that say
    nothing was measured last): a column too wide is skipped for the narrower ones after it.
    The run's name is always taken."""
    ranked = [c for c in KEPT_FIRST if c in order] + [c for c in order if c not in KEPT_FIRST]
    said = [c for c in ranked if _says(rows, c)]
    chosen: set[str] = set()
    used = 0
    for column in dict.fromkeys(["run", *said, *ranked]):
        need = _width(titles, rows, column) + CELL_PAD
        if column == "run" or used + need <= room:
            chosen.add(column)
            used += need
    return chosen


def history_table(
    rows: Sequence[Sequence[str]], width: int | None = None, *, on_terminal: bool = False
) -> tuple[list[str], list[str]]:
    """``loratop ls``'s table: the lines (the header first, in capitals), and the titles of the
    columns left out to fit ``width`` (empty when every column is there).

    Args:
        rows: One tuple of cells per run, under :data:`~loratop.tui.models.panels.HISTORY_COLUMNS`.
        width: Columns to fit in; ``None``: no limit (every column, nothing cut).
        on_terminal: The lines go to a terminal: a name may be cut in the middle when the
            essential columns would not fit otherwise. Never when piped.
    """
    table = fit_history(
        [dict(zip(HISTORY_COLUMNS, row, strict=True)) for row in rows], _room(width), can_cut=on_terminal
    )
    return table_lines(table), [t.upper() for t in table.left_out]


def _room(width: int | None) -> int | None:
    return None if width is None else width + len(GAP)  # no gap before the first column


def table_lines(table: FittedTable) -> list[str]:
    """A fitted table as ``ls`` prints it: the header in capitals, columns two spaces apart."""
    header = {c: t.upper() for c, t in table.titles.items()}
    widths = {c: _width(header, table.rows, c) for c in table.columns}
    return [GAP.join(row[c].ljust(widths[c]) for c in table.columns).rstrip() for row in [header, *table.rows]]


def ls_lines(
    runs: Sequence[RunSummary], width: int | None, *, on_terminal: bool, archived: int = 0, archive_dir: str = ""
) -> tuple[list[str], list[str]]:
    """What ``loratop ls`` prints: the table and the damaged runs (stdout), and its notes (stderr).

    On a terminal every line, the notes' included, fits ``width``; piped, nothing is cut.

    Args:
        runs: The runs, in the order listed.
        width: The terminal's width; ``None`` when piped.
        on_terminal: Whether stdout is a terminal (a name may then be cut in the middle).
        archived: How many runs are archived (not listed), said in a note.
        archive_dir: Where they are.
    """
    # A narrow spills column; every cell shown harmlessly (a run's name may hold escape sequences).
    rows = [{c: terminal_safe(v) for c, v in history_cells(run, spills_cpu_text="n/a").items()} for run in runs]
    table = fit_history(rows, _room(width), can_cut=on_terminal)
    out = table_lines(table)
    for run in runs:
        if run.damaged:
            out += _wrapped(
                terminal_safe(f"damaged: {run.name}: {'; '.join(run.damaged)}") + " (shown from its events.jsonl)",
                width,
            )
    notes = [f"({note})" for note in table.notes(upper=True)]
    if archived:
        notes.append(f"({archived} archived run{'s' if archived != 1 else ''} in {archive_dir}, not listed)")
    titles = [t.upper() for t in table.left_out]
    return out, [line for note in notes for line in _wrapped(note, width, titles)]


def _wrapped(text: str, width: int | None, phrases: Sequence[str] = ()) -> list[str]:
    """``text`` in lines of at most ``width`` (whole when ``None``), broken between words but
    never inside one of ``phrases`` (``GPU BUSY``)."""
    if width is None or len(text) <= width:
        return [text]
    for phrase in phrases:
        text = text.replace(phrase, phrase.replace(" ", NBSP))
    lines = textwrap.wrap(text, max(20, width), break_on_hyphens=False) or [text]
    return [line.replace(NBSP, " ") for line in lines]


NBSP = "\xa0"
"""Holds a phrase together where a note wraps (``textwrap`` breaks only at ASCII spaces)."""
