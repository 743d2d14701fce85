"""A finished run's summary of its events, and the fold behind it (standard library only).

:func:`fold_run` folds a run folder into a :class:`RunState`: its compact index
(:mod:`core.run_index`) when it has a good one, then the rest of ``events.jsonl``.
:func:`run_facts` is what ``ls`` and the home screen take from a run's events; for a finished
run it is cached beside the index by whoever owns the run's end (:func:`settle_finished_run`:
the trainer as it finishes, the agent of several ranks, a dashboard that watched the run end,
``loratop ls --index`` for runs from before), so listing hundreds of runs reads one small file
each. Listing itself never writes: what has no cache is folded in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from loratop.core import events as ev
from loratop.core.run_dir import EVENTS, read_json
from loratop.core.run_index import INDEX, Index, fold_file, index_looks_current, load_index
from loratop.core.run_state import RunState, finite_extreme


def fold_run(run_dir: Path, *, cache: bool = False) -> tuple[RunState, int]:
    """Every event of a run folded into a :class:`RunState`: from its compact index
    (:mod:`core.run_index`) when it has a good one, then the rest of ``events.jsonl``.

    Without an index the whole file is read; only with ``cache`` (:func:`settle_finished_run`)
    is a finished run's index written on the way. Without it nothing is written.

    Returns:
        The state, and the offset in ``events.jsonl`` read up to: a follower goes on from there.
    """
    state = RunState(run_dir)
    index = load_index(run_dir)
    if index is None:
        cache_if = (lambda: state.finished is not None) if cache else None
        offset, skipped = fold_file(run_dir, state.apply, cache_if=cache_if)
        state.garbage = skipped
        return state, offset
    state.apply_index(index, _last_memory(run_dir, index))
    offset, skipped = fold_file(run_dir, state.apply, start=index.covered)
    state.garbage += skipped
    return state, offset


def _last_memory(run_dir: Path, index: Index) -> dict[str, Any] | None:
    """The last indexed ``memory`` event in full, read back from where it ends in ``events.jsonl``."""
    if not index.memory["end"]:
        return None
    end = int(index.memory["end"][-1])
    if end <= 0:
        return None
    try:
        with open(run_dir / EVENTS, "rb") as fh:
            fh.seek(max(0, end - 65536))
            chunk = fh.read(min(end, 65536))
    except OSError:
        return None
    event = ev.decode_line(chunk.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    return event if event is not None and event["type"] == ev.MEMORY else None


def run_facts(state: RunState, now: float | None) -> dict[str, Any]:
    """What a summary takes from the events (the rest comes from status.json and config.yaml)."""
    config = state.started.get("config") if state.started else None
    best_eval = state.best_eval
    return {
        "status": state.status,
        "step": state.last_step,
        "max_steps": state.max_steps,
        "last_loss": state.last_loss,
        "peak_vram": state.peak_gpu_used,
        # None, not 0, where nothing was watched: no step reached the spike detector, or the
        # run never started (failed while loading), so no spill could have been counted.
        "spikes": len(state.spikes) if state.steps or state.spikes else None,
        "spills": max(len(state.spills), _rank_spills(state)) if state.started or state.spills else None,
        "eval_loss": state.last_eval.get("eval_loss") if state.last_eval else None,
        "best_eval_loss": best_eval.get("eval_loss") if best_eval else None,
        "best_eval_step": best_eval.get("step") if best_eval else None,
        "overfitting_step": state.overfitting.get("step") if state.overfitting else None,
        "world_size": state.world_size,
        "first_t": state.first_t,
        "device": state.device_kind,
        "min_loss": finite_extreme(min, state.loss),
        "duration": state.elapsed(time.time() if now is None else now),  # frozen once it is gone
        "tokens_per_s": tokens_per_s(state),
        "gpu_busy": state.mean_busy,
        "mfu": state.mfu(tokens_per_s(state)),
        "started_config": config if isinstance(config, dict) else None,
    }


def _rank_spills(state: RunState) -> int:
    """Spill events on all ranks together, from the latest ``ranks`` report (0 without one)."""
    return sum(s for r in state.rank_rows if isinstance(s := r.get("spills"), int))


def tokens_per_s(state: RunState) -> float | None:
    # The first step's tokens were trained before its event, so count from there on.
    if len(state.step_t) < 2:
        return None
    dt = state.step_t[-1] - state.step_t[0]
    if state.evals:
        dt -= state.eval_seconds(state.step_t[0], state.step_t[-1])  # evaluating is not training
    if not dt > 0:
        return None
    return (state.tokens[-1] - state.tokens[0]) / dt


SUMMARY = "summary.json"
"""In a finished run's index folder: its :func:`run_facts`, for ``ls`` and the home screen."""

SUMMARY_VERSION = 3
"""Bumped when :func:`run_facts` changes what a value means (2: ``None`` spikes and spills
where nothing was watched, not 0; 3: GPU busy % and MFU): a summary cached by an older
loratop is made again."""


def cached_facts(run_dir: Path) -> dict[str, Any] | None:
    """A finished run's cached :func:`run_facts`, or ``None`` when there is none that is good
    for its ``events.jsonl`` as it is now (missing, stale, of an older loratop, damaged)."""
    cached = read_json(run_dir / INDEX / SUMMARY)
    try:
        stamp = (run_dir / EVENTS).stat()
    except OSError:
        return None
    if not isinstance(cached, dict) or cached.get("events") != [stamp.st_size, stamp.st_mtime_ns]:
        return None  # events.jsonl changed since (or this is another run's)
    if cached.get("version") != SUMMARY_VERSION:
        return None
    facts = cached.get("facts")
    if not isinstance(facts, dict) or facts.keys() != _FACT_KEYS:
        return None
    return facts if all(_FACT_TYPES[key](value) for key, value in facts.items()) else None  # else: fold again


_FACT_KEYS = frozenset(
    {"status", "step", "max_steps", "last_loss", "peak_vram", "spikes", "spills", "first_t", "device", "min_loss",
     "duration", "tokens_per_s", "started_config", "world_size", "eval_loss", "best_eval_loss", "best_eval_step",
     "overfitting_step", "gpu_busy", "mfu"}
)  # fmt: skip


def _number(value: Any) -> bool:
    return value is None or type(value) is float or (type(value) is int and -(2**63) <= value < 2**63)


def _count(value: Any) -> bool:
    return value is None or (type(value) is int and 0 <= value < 2**63)


_FACT_TYPES: dict[str, Any] = {
    **dict.fromkeys(
        (
            "last_loss",
            "min_loss",
            "duration",
            "tokens_per_s",
            "eval_loss",
            "best_eval_loss",
            "first_t",
            "gpu_busy",
            "mfu",
        ),
        _number,
    ),
    **dict.fromkeys(
        ("step", "max_steps", "peak_vram", "spikes", "spills", "best_eval_step", "overfitting_step"), _count
    ),
    "world_size": lambda v: type(v) is int and 1 <= v < 1 << 20,
    "status": lambda v: type(v) is str,
    "device": lambda v: v is None or type(v) is str,
    "started_config": lambda v: v is None or type(v) is dict,
}
"""What each cached fact may be; a summary with anything else is folded again from the events."""


def store_facts(run_dir: Path, facts: dict[str, Any]) -> bool:
    """Cache a finished run's facts in its index folder. Returns whether it was written."""
    tmp = run_dir / INDEX / f".{SUMMARY}.{os.getpid()}.tmp"
    try:
        stamp = (run_dir / EVENTS).stat()
        # NaN stays NaN (a diverged run's last loss): Python's json reads its own NaN back.
        body = {"version": SUMMARY_VERSION, "events": [stamp.st_size, stamp.st_mtime_ns], "facts": facts}
        tmp.write_text(json.dumps(body))
        os.replace(tmp, run_dir / INDEX / SUMMARY)
    except (OSError, ValueError):  # no index folder, read-only: just not cached
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True


def settle_finished_run(run_dir: Path) -> bool:
    """Write a finished run's caches: its compact index where it has none (or a stale one) and
    its summary for ``ls``. The one call of whoever owns a run's end: the trainer last thing,
    the agent of several ranks after its own last events, a dashboard that saw the run end,
    ``loratop ls --index`` for runs from before. Caches already good are left as they are.

    Never raises for the folder's files (a read-only copy, a full disk, damage): the run is
    then just not cached, and listing folds it in memory.

    Returns:
        Whether the run's caches are good now: not for a run without a ``run_finished``, nor
        where the folder cannot be written.
    """
    try:
        if cached_facts(run_dir) is not None and index_looks_current(run_dir):
            return True  # (not load_index: a long run's whole index read, at every attach of it)
        state, _ = fold_run(run_dir, cache=True)
        if state.finished is None:
            return False
        return store_facts(run_dir, run_facts(state, None))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
        return False  # damaged beyond what the readers check: left for listing to show as such
