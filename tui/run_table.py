"""``loratop ls``: the run history as a text table, one line per run, fitted to the terminal.

Piped (no terminal, whatever ``COLUMNS`` says), every column is printed and nothing is cut: a
script or a pager gets every name whole, ready for ``attach``, ``compare`` and ``export``.
On a terminal too narrow for every column, the least useful columns are left out (the caller
says which) rather than letting a line wrap; a run name is cut in the middle only on a
terminal, and only when even the run, its status, step and final loss would not fit whole.
"""

from __future__ import annotations

from collections.abc import Sequence

from loratop.tui.panels import HISTORY_COLUMNS
from loratop.tui.runs import ELLIPSIS

GAP = "  "
"""Between two columns: two spaces, so a cell may hold single spaces (``r8 α16 ...``)."""

KEPT_FIRST = (
    "run", "status", "step", "final loss", "knobs", "parent", "spikes", "eval (best)", "peak VRAM", "GPU busy", "time",
    "spills",
)  # fmt: skip
"""The columns in the order they are kept when the table must narrow (the first four always)."""

ESSENTIAL = KEPT_FIRST[:4]

SHORT_TITLES = {"final loss": "loss", "eval (best)": "eval", "peak VRAM": "vram", "GPU busy": "busy"}
"""Narrower titles for a narrowed table."""

NOT_MEASURED = frozenset({"–", "n/a", "n/a (CPU)"})
"""Cells that say nothing was measured: a column of only these goes first when narrowing."""

MIN_NAME = 16
"""A name is never cut shorter than this (both ends are kept, where run names differ)."""


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


def history_table(
    rows: Sequence[Sequence[str]], width: int | None = None, *, on_terminal: bool = False
) -> tuple[list[str], list[str]]:
    """Lay out the run history (cells under :data:`~loratop.tui.panels.HISTORY_COLUMNS`).

    Args:
        rows: One tuple of cells per run.
        width: Columns to fit in; ``None``: no limit (every column, nothing cut).
        on_terminal: The lines go to a terminal: a name may be cut in the middle when the
            essential columns would not fit otherwise. Never when piped.

    Returns:
        The lines (the header first, in capitals), and the titles of the columns left out
        to fit (empty when every column is there).
    """
    titles = [title.upper() for title in HISTORY_COLUMNS]
    full = _lines([titles, *rows], range(len(titles)))
    if width is None or max(len(line) for line in full) <= width:
        return full, []
    short = [SHORT_TITLES.get(t, t).upper() for t in HISTORY_COLUMNS]
    vram = HISTORY_COLUMNS.index("peak VRAM")
    cells = [[("n/a" if i == vram and c == "n/a (CPU)" else c) for i, c in enumerate(row)] for row in rows]
    chosen = _choose([short, *cells], width)
    run = HISTORY_COLUMNS.index("run")
    if on_terminal and not {HISTORY_COLUMNS.index(t) for t in ESSENTIAL} <= set(chosen):
        others = sum(_width([short, *cells], HISTORY_COLUMNS.index(t)) + len(GAP) for t in ESSENTIAL[1:])
        name_width = max(MIN_NAME, width - others)
        for row in cells:
            row[run] = middle_cut(row[run], name_width)
        chosen = _choose([short, *cells], width)
    left_out = [titles[i] for i in range(len(titles)) if i not in chosen]
    return _lines([short, *cells], chosen), left_out


def _width(table: Sequence[Sequence[str]], column: int) -> int:
    return max(len(row[column]) for row in table)


def _choose(table: Sequence[Sequence[str]], width: int) -> list[int]:
    """The columns that fit in ``width``, taken in :data:`KEPT_FIRST` order (those that say
    nothing was measured last): a column too wide is skipped for the narrower ones after it."""
    index = {title: i for i, title in enumerate(HISTORY_COLUMNS)}
    said = [t for t in KEPT_FIRST if any(row[index[t]] not in NOT_MEASURED for row in table[1:])]
    order = [*ESSENTIAL, *(t for t in said if t not in ESSENTIAL), *(t for t in KEPT_FIRST if t not in said)]
    chosen: list[int] = []
    used = -len(GAP)
    for title in dict.fromkeys(order):
        need = _width(table, index[title]) + len(GAP)
        if title == "run" or used + need <= width:
            chosen.append(index[title])
            used += need
    return sorted(chosen)


def _lines(table: Sequence[Sequence[str]], columns: Sequence[int]) -> list[str]:
    widths = {i: _width(table, i) for i in columns}
    return [GAP.join(row[i].ljust(widths[i]) for i in columns).rstrip() for row in table]
