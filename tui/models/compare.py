"""Compare finished (or running) runs: what changed between them, and what came of it.

Pure functions over run folders, with no Textual here: the compare screen and
``loratop compare --no-tui`` both draw from them. The first run is the base (A);
every other run is described by how its config differs from A's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratop.core.run_state import RunState
from loratop.core.runs import ELLIPSIS, RunSummary, read_run
from loratop.core.value_format import format_value as config_value
from loratop.core.value_format import sci
from loratop.tui.models.panels import (
    at_step,
    busy_label,
    count_label,
    fmt_duration,
    fmt_loss,
    peak_vram_label,
    spills_label,
    steps_label,
)
from loratop.tui.models.run_table import middle_cut

IGNORED_KNOBS = frozenset({"output_dir", "parent"})
"""Top-level config keys that differ between any two runs and say nothing about them."""

CHANGE_LABEL_WIDTH = 70
"""A change label lists changed knobs up to about this many characters, then ``+N more``."""

BLOCKS = "▁▂▃▄▅▆▇█"
"""Sparkline levels, lowest first."""

NO_VALUE = "–"


@dataclass
class ComparedRun:
    """One run of a comparison: its config, every event folded in, and its summary."""

    name: str
    run_dir: Path
    config: dict[str, Any]
    """The resolved config (empty when the run has neither ``config.yaml`` nor ``run_started``)."""
    state: RunState
    summary: RunSummary


def load_compared(run_dir: Path) -> ComparedRun:
    """Read a run folder for comparison.

    Args:
        run_dir: A run folder (one holding ``events.jsonl``).

    Returns:
        The run with its config, its :class:`RunState` and its summary.
    """
    state, summary = read_run(run_dir)
    return ComparedRun(run_dir.resolve().name or str(run_dir), run_dir, summary.config or {}, state, summary)


def run_letter(index: int) -> str:
    """``A``, ``B``, … ``Z``, then ``AA``, ``AB``, …"""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


NAME_SEPARATORS = "-_."
"""Where a run name's parts meet (``tiny-cpu-demo-20261105-143012``)."""


def column_names(names: list[str], width: int) -> list[str]:
    """Run names cut to ``width`` characters each, keeping what tells them apart.

    Two reruns of one config differ only in their time stamps, at the end: a name cut at the
    end would leave them alike. What the names share from their start (back to a separator) is
    cut first, to its head and ``…``; should what differs be longer still, it keeps both of its
    ends (``r8-2026…-143012``).

    Args:
        names: The runs' names, in column order.
        width: The most characters a name may take (at least 3).

    Returns:
        One label per name: the name itself when it fits.
    """
    width = max(3, width)
    shared = os.path.commonprefix(names) if len(names) > 1 else ""
    cut = max(shared.rfind(sep) for sep in NAME_SEPARATORS) + 1 if shared else 0
    labels = []
    for name in names:
        if len(name) <= width:
            labels.append(name)
            continue
        rest = name[cut:]
        if cut and len(rest) + 2 <= width:
            labels.append(f"{name[: width - len(rest) - 1]}{ELLIPSIS}{rest}")
        else:
            labels.append(middle_cut(rest, width))
    return labels


FILE_STEM_WIDTH = 120
"""The longest file name (less its suffix) :func:`file_stem` gives: far under any file system's 255."""


def file_stem(names: list[str], width: int = FILE_STEM_WIDTH) -> str:
    """A file name for a comparison of these runs: ``compare-tiny-r8-vs-tiny-r16``.

    Characters a file name should not hold (``/``, spaces, control characters) become ``_``;
    past ``width`` characters each name is cut in the middle (both ends kept: where reruns of
    one config differ), and past that the later runs are counted (``-and-3-more``).
    """
    safe = ["".join(ch if ch.isalnum() or ch in "-_.+=" else "_" for ch in name).strip(".") or "run" for name in names]
    stem = "compare-" + "-vs-".join(safe)
    if len(stem) <= width:
        return stem
    each = max(21, (width - len("compare-")) // len(safe) - len("-vs-"))
    cut = [middle_cut(name, each).replace(ELLIPSIS, "~") for name in safe]
    for shown in range(len(cut), 0, -1):
        more = f"-and-{len(cut) - shown}-more" if shown < len(cut) else ""
        stem = "compare-" + "-vs-".join(cut[:shown]) + more
        if len(stem) <= width:
            return stem
    return stem[:width]


# -- config diff ----------------------------------------------------------------


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted knob paths to leaf values, in the config's own order (lists are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if not prefix and key in IGNORED_KNOBS:
            continue
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{path}."))  # an empty section holds no knobs
        else:
            flat[path] = value
    return flat


def config_diff(configs: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """The knobs whose values differ between configs.

    Args:
        configs: Resolved configs (``config.yaml`` dicts), base first.

    Returns:
        ``(dotted knob path, [each config's value])`` for every knob that differs, in
        config order (the first config's, then knobs only later configs have).
        ``output_dir`` and ``parent`` are ignored; a knob a config lacks shows as ``None``.
    """
    flats = [_flatten(config) for config in configs]
    paths: dict[str, None] = {}
    for flat in flats:
        paths.update(dict.fromkeys(flat))
    diff = []
    for path in paths:
        values = [flat.get(path) for flat in flats]
        if any(value != values[0] for value in values[1:]):
            diff.append((path, values))
    return diff


def _is_number(value: Any) -> bool:
    """A number a float can hold (an integer of 400 digits is shown as written, never converted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, float) or -(10**300) < value < 10**300


def _needs_sci(value: Any) -> bool:
    """Small fractions read better as ``2e-3`` than ``0.002``; whole numbers never need it."""
    return _is_number(value) and math.isfinite(value) and not float(value).is_integer() and abs(value) < 1e-2


def _shorten(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` characters, ending in ``…``."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _list_text(items: list[Any], width: int = 30) -> str:
    """Items joined with commas, cut to about ``width`` with a count of what was left out."""
    parts = [format_value(item) for item in items]
    text = ",".join(parts)
    if len(text) <= width:
        return text
    shown: list[str] = []
    for part in parts:
        if len(",".join([*shown, part])) > width - 4 and shown:
            break
        shown.append(part)
    return ",".join(shown) + f",…+{len(parts) - len(shown)}"


def format_value(value: Any, use_sci: bool = False) -> str:
    """One config value for display, spelled as :func:`core.value_format.format_value` does
    (``null``, ``true``, ``2e-3``); lists shortened, dicts folded; ``use_sci`` puts every
    number of a row in one style."""
    if use_sci and _is_number(value) and math.isfinite(value):
        return sci(float(value))
    if isinstance(value, list):
        return _list_text(value)
    if isinstance(value, dict):
        return "{…}" if value else "{}"
    return config_value(value)


def format_values(values: list[Any]) -> list[str]:
    """Values of one knob across runs, in one number style (``2e-3 → 3e-2``, not ``2e-3 → 0.03``)."""
    use_sci = any(_needs_sci(value) for value in values)
    return [format_value(value, use_sci) for value in values]


def change_label(base: dict[str, Any], other: dict[str, Any]) -> str:
    """How ``other``'s config differs from ``base``'s, e.g. ``r 8 → 16, learning_rate 2e-3 → 1e-3``.

    Knobs go by their last path component; past about :data:`CHANGE_LABEL_WIDTH`
    characters the rest is counted (``, +3 more``). ``same config`` when nothing differs.
    """
    diff = config_diff([base, other])
    if not diff:
        return "same config"
    parts = []
    for path, values in diff:
        before, after = format_values(values)
        parts.append(f"{path.rsplit('.', 1)[-1]} {before} → {after}")
    shown: list[str] = []
    for part in parts:
        if shown and len(", ".join([*shown, part])) > CHANGE_LABEL_WIDTH:
            break
        shown.append(part)
    label = _shorten(", ".join(shown), CHANGE_LABEL_WIDTH)
    left = len(parts) - len(shown)
    return label + (f", +{left} more" if left else "")


# -- outcomes -------------------------------------------------------------------


def _spills(run: ComparedRun) -> str:
    if run.state.started is None and run.summary.device != "cpu":
        return NO_VALUE
    return spills_label(run.summary.spills, run.summary.device)


MEAN_RATE = "tok/s (mean)"
"""The tokens/s row: the run's mean, from its first step to its last (evaluations left out)."""


def _last_loss(run: ComparedRun) -> str:
    """The last step's loss; a running run's is its loss now, not a final one."""
    text = fmt_loss(run.summary.last_loss)
    return f"{text} now" if run.summary.is_running and run.summary.last_loss is not None else text


def _rate(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else NO_VALUE


def _best_eval(run: ComparedRun) -> str:
    s = run.summary
    if s.best_eval_loss is None:
        return NO_VALUE
    overfit = " overfit" if s.overfitting_step is not None else ""
    return f"{fmt_loss(s.best_eval_loss)}{at_step(s.best_eval_step)}{overfit}"


def outcome_rows(runs: list[ComparedRun]) -> list[tuple[str, list[str]]]:
    """What each run came to, formatted for display, one row per measure.

    Rows: final loss, min loss, peak VRAM, tokens/s (the run's mean: ``tok/s (mean)``, where the
    monitor's header says the last 20 steps'), GPU busy and MFU, spikes, spills, steps, duration,
    status. Nothing unmeasured shows as zero: VRAM on a CPU run is ``n/a (CPU)``, an unknown value
    ``–``. A running run's loss is its loss now (``2.3101 now``), and the row is then titled
    ``loss``, not ``final loss``.
    """
    # Runs of several ranks: how many, since peak VRAM and spills are then over all of them.
    several = any(r.summary.world_size > 1 for r in runs)
    ranks = [("ranks", [str(r.summary.world_size) for r in runs])] if several else []
    # Runs with held-out data: the last eval loss and the best, with its step.
    evals: list[tuple[str, list[str]]] = []
    if any(r.summary.best_eval_loss is not None for r in runs):
        evals = [
            ("eval loss", [fmt_loss(r.summary.eval_loss) for r in runs]),
            ("best eval", [_best_eval(r) for r in runs]),
        ]
    running = any(r.summary.is_running for r in runs)
    return [
        ("loss" if running else "final loss", [_last_loss(r) for r in runs]),
        ("min loss", [fmt_loss(r.summary.min_loss) for r in runs]),
        *evals,
        ("peak VRAM", [peak_vram_label(r.summary.peak_vram, r.summary.device) for r in runs]),
        *ranks,
        (MEAN_RATE, [_rate(r.summary.tokens_per_s) for r in runs]),
        ("GPU busy", [busy_label(r.summary.gpu_busy, r.summary.mfu, r.summary.device) for r in runs]),
        ("spikes", [count_label(r.summary.spikes) if r.state.started is not None else NO_VALUE for r in runs]),
        ("spills", [_spills(r) for r in runs]),
        ("steps", [steps_label(r.summary.step, r.summary.max_steps) for r in runs]),
        ("duration", [fmt_duration(r.summary.duration) for r in runs]),
        ("status", [r.summary.status for r in runs]),
    ]


# -- text report ----------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]], width: int) -> list[str]:
    """Left-aligned columns two spaces apart; the widest value columns give way when ``width`` is short."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    while sum(widths) + 2 * (len(widths) - 1) > width:
        widest = max(range(1, len(widths)), key=lambda i: widths[i])
        if widths[widest] <= 8:
            break
        widths[widest] -= 1
    return [
        "  ".join(_shorten(cell, w).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]


def _buckets(xs: list[float], ys: list[float], lo: float, hi: float, columns: int) -> list[float | None]:
    """Mean of the finite ``ys`` per column over ``[lo, hi]``; NaN where a column holds only
    non-finite losses; ``None`` where it holds no step."""
    sums = [0.0] * columns
    counts = [0] * columns
    seen = [False] * columns
    span = hi - lo
    for x, y in zip(xs, ys, strict=True):
        col = 0 if span <= 0 else min(columns - 1, max(0, int((x - lo) / span * columns)))
        seen[col] = True
        if math.isfinite(y):
            sums[col] += y
            counts[col] += 1
    return [sums[i] / counts[i] if counts[i] else (math.nan if seen[i] else None) for i in range(columns)]


@dataclass
class Sparklines:
    """Loss curves drawn as block characters on one shared scale."""

    lines: list[str]
    """One line per run, base first."""
    y_lo: float
    """The loss a ``▁`` stands for."""
    y_hi: float
    """The loss a ``█`` stands for."""
    x_lo: float
    x_hi: float
    """The x range the longest run spans (steps or tokens)."""


def sparklines(runs: list[ComparedRun], columns: int, x: str = "steps") -> Sparklines | None:
    """Each run's loss curve as a line of block characters, all on one y and one x scale.

    Args:
        runs: The runs, base first.
        columns: Characters per line (the longest run fills them; a shorter one ends early).
        x: ``steps`` or ``tokens``: what the x axis measures.

    Returns:
        The lines and their scale, or ``None`` when no run has a finite loss yet. A
        column whose losses were all NaN/inf is ``×``; each column shows the mean loss of
        the steps that fall in it.
    """
    series = []
    for run in runs:
        xs = [float(v) for v in (run.state.tokens if x == "tokens" else run.state.steps)]
        series.append((xs, list(run.state.loss)))
    all_x = [v for xs, _ in series for v in xs]
    if not all_x:
        return None
    x_lo, x_hi = min(all_x), max(all_x)
    most_steps = max(len(xs) for xs, _ in series)
    columns = max(1, min(columns, most_steps))  # never wider than one column per step
    bucketed = [_buckets(xs, ys, x_lo, x_hi, columns) for xs, ys in series]
    finite = [v for b in bucketed for v in b if v is not None and math.isfinite(v)]
    if not finite:
        return None
    y_lo, y_hi = min(finite), max(finite)
    lines = []
    for buckets in bucketed:
        chars = []
        previous: float | None = None
        last = max((i for i, v in enumerate(buckets) if v is not None), default=-1)
        for i, value in enumerate(buckets):
            if value is None and previous is not None and i < last:
                value = previous  # a column between two steps (uneven token counts): carry the curve on
            previous = value
            if value is None:
                chars.append(" ")
            elif not math.isfinite(value):
                chars.append("×")
            elif y_hi == y_lo:
                chars.append(BLOCKS[len(BLOCKS) // 2])
            else:
                chars.append(BLOCKS[round((value - y_lo) / (y_hi - y_lo) * (len(BLOCKS) - 1))])
        lines.append("".join(chars).rstrip())
    return Sparklines(lines, y_lo, y_hi, x_lo, x_hi)


def _spike_note(run: ComparedRun, limit: int = 8) -> str:
    steps = [str(s.get("step")) for s in run.state.spikes]
    if not steps:
        return ""
    more = f", … (+{len(steps) - limit})" if len(steps) > limit else ""
    return f"spikes at {', '.join(steps[:limit])}{more}"


def format_compare(runs: list[ComparedRun], width: int = 80, x: str = "steps") -> str:
    """The comparison as plain text (``loratop compare --no-tui``).

    A legend (A is the base; every other run with its change from A), the config
    diff, the outcomes, and each run's loss curve as a sparkline on a shared scale.

    Args:
        runs: Two or more runs, base first.
        width: Characters per line to fit the tables and curves into.
        x: ``steps`` or ``tokens``: the curves' x axis.
    """
    width = max(40, width)
    letters = [run_letter(i) for i in range(len(runs))]
    out = ["runs"]
    for i, (letter, run) in enumerate(zip(letters, runs, strict=True)):
        if not run.config:
            note = "(base; no config recorded)" if i == 0 else "(no config recorded)"
        else:
            note = "(base)" if i == 0 else change_label(runs[0].config, run.config)
        out.append(f"  {letter}  {run.name}  {note}")

    diff = config_diff([run.config for run in runs])
    out.append("")
    if diff:
        out.append("config diff")
        rows = [[path, *format_values(values)] for path, values in diff]
        out += ["  " + line for line in _table(["knob", *letters], rows, width - 2)]
    else:
        out.append("config diff: none (same config)")

    out.append("")
    out.append("outcome")
    rows = [[label, *values] for label, values in outcome_rows(runs)]
    out += ["  " + line for line in _table(["", *letters], rows, width - 2)]

    out.append("")
    label_width = max(len(letter) for letter in letters)
    lead = " " * (label_width + 4)  # "  A │"
    curves = sparklines(runs, width - len(lead), x)
    if curves is None:
        out.append("loss: no finite step loss yet")
    else:
        unit = "tokens" if x == "tokens" else "step"
        out.append(
            f"loss by {unit} ({curves.x_lo:,.0f}–{curves.x_hi:,.0f}), one scale for all runs: "
            f"{BLOCKS[0]} {fmt_loss(curves.y_lo)} … {BLOCKS[-1]} {fmt_loss(curves.y_hi)}"
        )
        for letter, run, line in zip(letters, runs, curves.lines, strict=True):
            out.append(f"  {letter.ljust(label_width)} │{line or '(no steps)'}")
            note = _spike_note(run)
            if note:
                out.append(f"{lead}{note}")
    return "\n".join(out)
