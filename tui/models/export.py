"""Export a run's metrics and events for a notebook or a spreadsheet (``loratop export``).

Reads only the run folder's ``events.jsonl``; writes plain files, nothing else.
"""

from __future__ import annotations

import csv
import json
import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from loratop.core import events as ev
from loratop.core.gpu_busy import busy_pct
from loratop.core.run_dir import EVENTS
from loratop.core.run_state import RunState

EXPORT_DIR = Path("loratop-exports")
"""Where exports go unless told otherwise (``loratop export -o DIR``), under the current folder:
the same for ``loratop export`` and the dashboard's ``x`` (which adds the screen as SVG)."""

METRICS_HEADER = (
    "step",
    "time_s",
    "loss",
    "lr",
    "grad_norm",
    "tokens",
    "epoch",
    "spike",
    "gpu_used_bytes",
    "host_rss_bytes",
    "ranks",
    "max_rank_gpu_used_bytes",
    "max_rank_rss_bytes",
    "gpu_busy_pct",
    "mfu_pct",
)
"""Columns of the metrics CSV, one row per ``step`` event. ``ranks`` and the two after it are
for runs of several ranks (torchrun): the world size, and the fullest rank's GPU and RSS at the
latest report; empty for a single process. ``gpu_busy_pct``: NVML's busy % of the GPU rank 0
trains on, at the latest sample; ``mfu_pct``: model-FLOPs utilisation over the last 20 steps
(:mod:`core.gpu_busy`); both empty on a CPU run (or an unknown GPU peak, for MFU)."""

_SEVERITY_RANK = {"warn": 1, "severe": 2, "fatal": 3}


def load_events(run_dir: Path) -> list[dict[str, Any]]:
    """A run's valid events, one per ``seq`` (the first copy wins), in ``seq`` order."""
    path = run_dir / EVENTS
    if not path.is_file():
        return []
    events, _ = ev.read_events(str(path))
    by_seq: dict[int, dict[str, Any]] = {}
    for event in events:
        by_seq.setdefault(event["seq"], event)
    return [by_seq[seq] for seq in sorted(by_seq)]


def _cell(value: Any) -> str:
    """A CSV cell: empty when missing, ``nan``/``inf`` spelled out, floats exact."""
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # exact round-trip; "inf" and "-inf" for infinities
    if isinstance(value, int):
        return str(value)
    return ""  # not a number: say nothing rather than something wrong


def _gpu_used(memory: dict[str, Any] | None) -> int | None:
    """The fullest GPU's NVML used bytes in a memory sample (what runs out first)."""
    if memory is None:
        return None
    used = [g.get("used") for g in memory.get("gpus") or [] if isinstance(g.get("used"), int)]
    return max(used) if used else None


def _host_rss(memory: dict[str, Any] | None) -> int | None:
    rss = (memory or {}).get("host", {}).get("rss")
    return rss if isinstance(rss, int) else None


def _rank_max(ranks: dict[str, Any] | None, pick: Any) -> int | None:
    values = [v for r in (ranks or {}).get("ranks") or [] if isinstance(v := pick(r), int)]
    return max(values) if values else None


def export_metrics_csv(run_dir: Path, out: Path, events: list[dict[str, Any]] | None = None) -> int:
    """Write one CSV row per step: loss, lr, grad norm, tokens, epoch, spike, memory.

    ``time_s`` counts from the run's first event; ``spike`` holds the severity of a
    spike flagged at that step (the worst, if several), else nothing; the memory
    columns hold the latest sample at or before the step event, empty when there was
    none (on a CPU run the GPU column stays empty: nothing was measured).

    Args:
        run_dir: The run folder.
        out: The CSV file to write (replaced if it exists).

    Returns:
        How many rows were written (the header not counted).
    """
    events = load_events(run_dir) if events is None else events
    spikes: dict[Any, str] = {}
    for event in events:
        if event["type"] == ev.SPIKE:
            severity = str(event.get("severity", "?"))
            step = event.get("step")
            if step not in spikes or _SEVERITY_RANK.get(severity, 0) >= _SEVERITY_RANK.get(spikes[step], 0):
                spikes[step] = severity
    first_t = events[0]["t"] if events else 0.0

    state = RunState(run_dir)  # what MFU needs: the model's size, the GPUs' names, the world size
    for event in events:
        if event["type"] in (ev.RUN_STARTED, ev.RANKS):
            state.apply(event)
    recent: deque[tuple[float, int]] = deque(maxlen=21)

    def mfu_pct(event: dict[str, Any]) -> float | None:
        tokens = event.get("tokens")
        if not isinstance(tokens, int):
            return None
        recent.append((float(event["t"]), tokens))
        (t0, n0), (t1, n1) = recent[0], recent[-1]
        value = state.mfu((n1 - n0) / (t1 - t0)) if t1 > t0 else None
        return None if value is None else round(100 * value, 3)

    def metric_rows() -> Iterator[list[str]]:
        latest: dict[str, dict[str, Any]] = {}  # the last event of each type so far: no switch over types
        for event in events:
            latest[event["type"]] = event
            if event["type"] == ev.STEP:
                step = event.get("step")
                memory, ranks = latest.get(ev.MEMORY), latest.get(ev.RANKS)
                yield [
                    _cell(step),
                    f"{event['t'] - first_t:.3f}",
                    _cell(event.get("loss")),
                    _cell(event.get("lr")),
                    _cell(event.get("grad_norm")),
                    _cell(event.get("tokens")),
                    _cell(event.get("epoch")),
                    spikes.get(step, ""),
                    _cell(_gpu_used(memory)),
                    _cell(_host_rss(memory)),
                    _cell(ranks.get("world_size")) if ranks else "",
                    _cell(_rank_max(ranks, lambda r: (r.get("gpu") or {}).get("used"))),
                    _cell(_rank_max(ranks, lambda r: r.get("rss"))),
                    _cell(busy_pct(memory.get("gpus")) if memory else None),
                    _cell(mfu_pct(event)),
                ]

    return _write_csv(out, METRICS_HEADER, metric_rows())


def _write_csv(out: Path, header: Sequence[str], rows: Iterable[list[str]]) -> int:
    """A CSV file of a header and ``rows`` (replaced if it exists); returns the rows written."""
    written = 0
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            written += 1
    return written


def export_events_jsonl(run_dir: Path, out: Path, events: list[dict[str, Any]] | None = None) -> int:
    """Write the run's valid events, de-duplicated by ``seq``, in ``seq`` order.

    Broken lines are dropped; every line written decodes with :func:`core.events.decode_line`.

    Args:
        run_dir: The run folder.
        out: The JSONL file to write (replaced if it exists).

    Returns:
        How many events were written.
    """
    events = load_events(run_dir) if events is None else events
    with open(out, "w") as fh:
        for event in events:
            fh.write(json.dumps(ev.jsonable(event), separators=(",", ":"), allow_nan=False) + "\n")
    return len(events)


EVAL_HEADER = ("step", "time_s", "eval_loss", "eval_tokens", "eval_rows", "duration_s", "best_loss", "best_step")
"""Columns of the eval CSV, one row per ``eval`` event."""


def export_eval_csv(run_dir: Path, out: Path, events: list[dict[str, Any]] | None = None) -> int:
    """Write one CSV row per evaluation of the held-out loss. Returns the rows written."""
    events = load_events(run_dir) if events is None else events
    first_t = events[0]["t"] if events else 0.0
    rows = (
        [_cell(e.get("step")), f"{e['t'] - first_t:.3f}", *(_cell(e.get(k)) for k in EVAL_HEADER[2:])]
        for e in events
        if e["type"] == ev.EVAL
    )
    return _write_csv(out, EVAL_HEADER, rows)


def export_files(run_dir: Path, out_dir: Path = EXPORT_DIR) -> list[tuple[Path, int]]:
    """Write ``<run>-metrics.csv`` and ``<run>-events.jsonl`` into ``out_dir`` (created if
    needed), and ``<run>-eval.csv`` for a run that evaluated a held-out loss.

    Returns:
        Each file written with its row count.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    name = run_dir.resolve().name
    metrics = out_dir / f"{name}-metrics.csv"
    events = out_dir / f"{name}-events.jsonl"
    every = load_events(run_dir)  # read once for all three
    written = [
        (metrics, export_metrics_csv(run_dir, metrics, every)),
        (events, export_events_jsonl(run_dir, events, every)),
    ]
    if any(e["type"] == ev.EVAL for e in every):
        evals = out_dir / f"{name}-eval.csv"
        written.append((evals, export_eval_csv(run_dir, evals, every)))
    return written


def write_new(out_dir: Path, stem: str, suffix: str, text: str) -> Path:
    """Write ``text`` into a new file ``out_dir/<stem><suffix>`` (the folder made if needed),
    never over an existing one: ``<stem>-2<suffix>``, ``-3``... when the name is taken.

    Returns:
        The file written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = out_dir / f"{stem}{f'-{n}' if n > 1 else ''}{suffix}"
        try:
            with open(path, "x", encoding="utf-8") as fh:  # "x": fails on a file that exists, even one made meanwhile
                fh.write(text)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{out_dir}: {stem}{suffix} and 9,999 numbered copies exist")


def export_run(run_dir: Path, out_dir: Path = EXPORT_DIR) -> list[Path]:
    """Write a run's metrics CSV, events JSONL (and eval CSV) into ``out_dir``; the paths written."""
    return [path for path, _ in export_files(run_dir, out_dir)]
