"""Find runs on disk and summarise them (for ``loratop ls``, the home screen and ``attach``).

A run is a folder with an ``events.jsonl``; everything here is read from its files,
so runs launched from any terminal show up. Listing never writes into a run folder: a finished
run's caches are written by whoever owns its end (:func:`core.run_summary.settle_finished_run`),
what has none is folded in memory, and a trainer found gone is said ``lost`` here, not recorded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loratop.core import events as ev
from loratop.core.run_dir import (
    CONFIG,
    EVENTS,
    LOST,
    NO_REPORT,
    STATUS,
    process_paused,
    proof_of_death,
    proven_trainer_pid,
    read_status,
    trainer_alive,
    valid_pid,
    why_not_proven,
)
from loratop.core.run_index import fold_file
from loratop.core.run_state import PAUSED, RUNNING, UNKNOWN, RunState
from loratop.core.run_summary import cached_facts, fold_run, run_facts
from loratop.core.value_format import sci
from loratop.core.yaml_files import MAX_YAML_BYTES, load_yaml

DEFAULT_ROOT = Path("runs")


@dataclass
class RunSummary:
    """One line of ``loratop ls``."""

    run_dir: Path
    status: str
    """``running``, ``starting``, a finished status, ``lost`` or ``unknown``."""
    step: int
    max_steps: int | None
    last_loss: float | None
    peak_vram: int | None
    """Peak NVML used bytes on any GPU; ``None`` when no GPU reading exists."""
    spikes: int | None
    """Loss spikes flagged; ``None`` when no step was ever trained (nothing was watched)."""
    spills: int | None
    """Paged-optimizer spill events; ``None`` when the run never started (failed while loading)."""
    started_at: float | None
    device: str | None
    config: dict[str, Any] | None = None
    """The resolved config: ``config.yaml``, else the one ``run_started`` carried; ``None`` if neither."""
    min_loss: float | None = None
    """Lowest finite step loss; ``None`` when no step had a finite loss."""
    duration: float | None = None
    """Seconds from the trainer's first event to its end (or to now while it runs)."""
    tokens_per_s: float | None = None
    """Tokens trained per second between the first and the last step event."""
    parent: str | None = None
    """What the run was tweaked from, as written: a run folder or a config file path."""
    damaged: tuple[str, ...] = ()
    """Values of ``status.json`` / ``config.yaml`` that were damaged and left out, in words."""
    world_size: int = 1
    """Ranks the run trained on (torchrun); peak VRAM and spills are then over all of them."""
    eval_loss: float | None = None
    """The last evaluation's held-out loss; ``None`` for a run without eval data."""
    best_eval_loss: float | None = None
    best_eval_step: int | None = None
    overfitting_step: int | None = None
    """Where an overfitting alert said it began, if one was raised."""
    gpu_busy: float | None = None
    """The GPU's mean NVML busy % while steps ran; ``None`` on CPU (or where NVML does not say)."""
    mfu: float | None = None
    """Model-FLOPs utilisation (0..1) over the run (:mod:`core.gpu_busy`); ``None`` on CPU or
    where the GPU's peak is unknown."""
    uncached: bool = field(default=False, compare=False)
    """A finished run read from its events for want of a cached summary (a run from an older
    loratop): ``loratop ls --index`` caches it. How it was read, not what it says."""

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def is_running(self) -> bool:
        return self.status in ev.LIVE_STATUSES


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """A run folder's ``config.yaml`` as a dict, or ``None`` when missing or unreadable."""
    try:
        with open(run_dir / CONFIG, "rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)  # a 50 MB file is damage: not read whole
        data = load_yaml(raw.decode())
    except (OSError, ValueError, RecursionError, yaml.YAMLError):  # ValueError: UTF-8, too big, a 5000-digit int
        return None
    return data if isinstance(data, dict) else None


_STATUS_TIMES = ("started_at", "launched_at", "ended_at")
_CONFIG_SECTIONS = ("model", "quantization", "lora", "training", "data", "monitor", "distributed")
"""RunConfig's sections, by hand: the schema (pydantic) stays out of the home screen's import."""


def _is_time(value: Any) -> bool:
    """A Unix time: a number within ±1e12 s (NaN and infinities fail the comparison; a huge
    integer is compared, never converted, so 10**400 is no time and no OverflowError)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -1e12 < value < 1e12


def checked_status(run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """``status.json`` with every damaged value left out, and what was damaged (in words).

    Any value of any type may be there (a crash mid-write, a hand edit, another tool): one
    damaged run must not take ``ls`` or the home screen down for the whole folder.
    """
    raw = read_status(run_dir)
    if raw is None:
        return {}, ([f"{STATUS} unreadable"] if (run_dir / STATUS).exists() else [])
    status, damaged = dict(raw), []
    for key in _STATUS_TIMES:
        if key in status and status[key] is not None and not _is_time(status[key]):
            damaged.append(f"{STATUS} {key}={status.pop(key)!r}")
    if "pid" in status and status["pid"] is not None and valid_pid(status["pid"]) is None:
        damaged.append(f"{STATUS} pid={status['pid']!r} is no usable pid")  # never trusted nor signalled
    for key in ("parent", "status", "state"):
        if key in status and status[key] is not None and not isinstance(status[key], str):
            damaged.append(f"{STATUS} {key}={status.pop(key)!r}")
    return status, damaged


def checked_config(run_dir: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """``config.yaml`` with damaged sections left out, and what was damaged."""
    config = read_config(run_dir)
    if config is None:
        return None, ([f"{CONFIG} unreadable"] if (run_dir / CONFIG).exists() else [])
    damaged = []
    for key in _CONFIG_SECTIONS:
        if key in config and not isinstance(config[key], dict):
            damaged.append(f"{CONFIG} {key}: {config.pop(key)!r:.30}")
    if "parent" in config and config["parent"] is not None and not isinstance(config["parent"], str):
        damaged.append(f"{CONFIG} parent={config.pop('parent')!r:.30}")
    return config, damaged


def read_run(run_dir: Path, now: float | None = None) -> tuple[RunState, RunSummary]:
    """Fold a run folder's events into a :class:`RunState` and summarise it.

    Args:
        run_dir: The run folder.
        now: Unix time for a running run's duration; the clock when omitted.

    Returns:
        The state (every event folded in) and its summary.
    """
    state, _ = fold_run(run_dir)
    status_file, damaged = checked_status(run_dir)
    if state.finished is None:
        judge_trainer(state, status_file)
    return state, _summary(run_dir, run_facts(state, now), status_file, damaged)


def _summary(run_dir: Path, facts: dict[str, Any], status_file: dict[str, Any], damaged: list[str]) -> RunSummary:
    config, config_damage = checked_config(run_dir)
    if config is None:
        config = facts["started_config"]
    parent = (config or {}).get("parent") or status_file.get("parent")
    return RunSummary(
        run_dir,
        facts["status"],
        facts["step"],
        facts["max_steps"],
        facts["last_loss"],
        facts["peak_vram"],
        facts["spikes"],
        facts["spills"],
        status_file.get("started_at") or facts["first_t"],
        facts["device"],
        config=config,
        min_loss=facts["min_loss"],
        duration=facts["duration"],
        tokens_per_s=facts["tokens_per_s"],
        parent=str(parent) if parent is not None else None,
        damaged=tuple(damaged + config_damage),
        world_size=facts["world_size"],
        eval_loss=facts["eval_loss"],
        best_eval_loss=facts["best_eval_loss"],
        best_eval_step=facts["best_eval_step"],
        overfitting_step=facts["overfitting_step"],
        gpu_busy=facts["gpu_busy"],
        mfu=facts["mfu"],
    )


def judge_trainer(state: RunState, status: dict[str, Any]) -> None:
    """Whether a run without a ``run_finished`` still trains, from its ``status.json``, into ``state``.

    Proven alive: nothing changes. Proven gone (its pid is free, reused, or from before the
    last boot): ``lost``, in ``state`` only: a listing never writes ``status.json`` (a dashboard
    that watches the run records it). Neither (another host's pid, no start time recorded):
    ``unknown``.
    """
    verdict, why = trainer_verdict(status)
    state.paused = why if verdict == PAUSED else None
    if verdict == LOST:
        state.mark_lost(why or NO_REPORT)
    elif verdict == UNKNOWN:
        state.not_proven = why


def trainer_verdict(status: dict[str, Any]) -> tuple[str, str | None]:
    """What a run's ``status.json`` proves about its trainer (no ``run_finished`` yet), and why.

    Returns:
        ``("running", None)``; ``("lost", cause)`` when it is gone (recorded so, or its pid
        is free, reused or from before the last boot); ``("unknown", why)`` when this machine
        cannot tell.
    """
    if status.get("state") == LOST:
        return LOST, str(status.get("lost_cause") or NO_REPORT)
    if trainer_alive(status):
        pid = proven_trainer_pid(status)
        if pid is not None and process_paused(pid):
            return PAUSED, f"the trainer (pid {pid}) is stopped: kill -CONT {pid} resumes it"
        return RUNNING, None
    if "pid" not in status:
        return UNKNOWN, "status.json names no trainer pid"
    if proof_of_death(status) is not None:
        return LOST, NO_REPORT
    return UNKNOWN, why_not_proven(status)


def summarise_run(run_dir: Path) -> RunSummary:
    """Read a run folder's status and events into a summary (the dashboard's own model).

    A finished run's summary of its events is cached in its index folder (by whoever owned
    its end): listing hundreds of runs reads one small file each, not every events.jsonl. A run
    without one is folded in memory; nothing is written.
    """
    return _look(run_dir)[0]


def unreadable_run(run_dir: Path, exc: BaseException) -> RunSummary:
    """The line of a run that could not be read at all: listed as damaged, with why, so that
    every other run is still listed (a reader's last line of defence, after every check of
    the files themselves)."""
    why = f"cannot be read: {type(exc).__name__}: {str(exc)[:200]}"
    return RunSummary(run_dir, UNKNOWN, 0, None, None, None, None, None, None, None, damaged=(why,))


def _look(run_dir: Path, now: float | None = None) -> tuple[RunSummary, RunState | None, int]:
    """A run's summary, and for a run not finished yet its state and the offset it was folded
    to (a :class:`RunCatalog` grows it from there); a finished run's facts come from its cache
    when it has one, else from its events, folded in memory (nothing is written). A run that
    cannot be read is listed as damaged (:func:`unreadable_run`)."""
    try:
        return _read_look(run_dir, now)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        return unreadable_run(run_dir, exc), None, 0


def _read_look(run_dir: Path, now: float | None) -> tuple[RunSummary, RunState | None, int]:
    facts = cached_facts(run_dir)
    if facts is not None:
        status_file, damaged = checked_status(run_dir)
        return _summary(run_dir, facts, status_file, damaged), None, 0
    state, offset = fold_run(run_dir)
    status_file, damaged = checked_status(run_dir)
    if state.finished is not None:
        facts = run_facts(state, None)  # a finished run's duration does not depend on now
        summary = _summary(run_dir, facts, status_file, damaged)
        summary.uncached = True
        return summary, None, offset
    judge_trainer(state, status_file)
    return _summary(run_dir, run_facts(state, now), status_file, damaged), state, offset


def list_runs(root: Path = DEFAULT_ROOT) -> list[RunSummary]:
    """Every run under ``root``: running ones first, then newest first."""
    if not root.is_dir():
        return []
    runs = [summarise_run(p) for p in root.iterdir() if (p / EVENTS).is_file()]
    return sort_runs(runs, "started")


@dataclass
class _Known:
    """What a :class:`RunCatalog` remembers of one run between two looks."""

    stamp: tuple[int | None, ...]
    summary: RunSummary
    state: RunState | None = None
    """A run not finished yet: its state, folded up to :attr:`offset`, grown at each look."""
    offset: int = 0


class RunCatalog:
    """The runs under a folder, kept up to date cheaply: for the home screen's live list.

    Each look stats every run's files. A run whose files did not change keeps its summary
    (a running one's time is brought up to date); a running one whose ``events.jsonl`` grew
    folds only what was appended; any other is summarised afresh (a finished run from its
    cached summary). Nothing is read whole twice.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._known: dict[Path, _Known] = {}

    def runs(self, now: float | None = None) -> list[RunSummary]:
        """Every run under the folder, running ones first, then newest first."""
        now = time.time() if now is None else now
        found: dict[Path, _Known] = {}
        try:
            folders = list(self.root.iterdir())
        except OSError:
            folders = []
        for folder in folders:
            stamp = _stamp(folder)
            if stamp is None:
                continue
            known = self._known.get(folder)
            if known is not None and known.stamp == stamp and known.state is None:
                found[folder] = known  # finished, unchanged
            elif known is not None and known.state is not None and (stamp[0] or 0) >= known.offset:
                found[folder] = self._grow(folder, known, stamp, now)
            else:
                found[folder] = self._look(folder, stamp, now)
        self._known = found
        return sort_runs([known.summary for known in found.values()], "started")

    def _look(self, folder: Path, stamp: tuple[int | None, ...], now: float) -> _Known:
        summary, state, offset = _look(folder, now)
        return _Known(stamp, summary, state, offset)

    def _grow(self, folder: Path, known: _Known, stamp: tuple[int | None, ...], now: float) -> _Known:
        try:
            return self._grown(folder, known, stamp, now)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            return _Known(stamp, unreadable_run(folder, exc))

    def _grown(self, folder: Path, known: _Known, stamp: tuple[int | None, ...], now: float) -> _Known:
        state = known.state
        assert state is not None
        offset, skipped = fold_file(folder, state.apply, start=known.offset)
        state.garbage += skipped
        status_file, damaged = checked_status(folder)
        state.not_proven = None  # judged again below, from the status as it is now
        if state.finished is None and not state.trainer_gone:
            judge_trainer(state, status_file)
        summary = _summary(folder, run_facts(state, now), status_file, damaged)
        return _Known(stamp, summary, state if state.finished is None else None, offset)


def _stamp(folder: Path) -> tuple[int | None, ...] | None:
    """What tells whether a run's files changed: ``events.jsonl``'s size and time, and the
    times of ``status.json`` and ``config.yaml``; ``None`` when it is no run."""
    try:
        events = (folder / EVENTS).stat()
    except OSError:
        return None
    times: list[int | None] = []
    for name in (STATUS, CONFIG):
        try:
            times.append((folder / name).stat().st_mtime_ns)
        except OSError:
            times.append(None)
    return (events.st_size, events.st_mtime_ns, *times)


# -- history: sorting, parents, knobs -----------------------------------------

_STATUS_ORDER = (
    ev.RUNNING, ev.PAUSED, ev.STARTING, ev.UNKNOWN, ev.LOST, ev.FAILED, ev.OOM, ev.DISK_FULL, ev.STOPPED, ev.COMPLETED
)  # fmt: skip


def _newest(run: RunSummary) -> float:
    return -(run.started_at or 0)


def _unknown_last(value: float | None) -> tuple[bool, float]:
    """Sort key: known finite values first (ascending), then NaN/inf/unknown."""
    known = value is not None and math.isfinite(value)
    return (not known, value if known and value is not None else 0.0)


_SORTS: dict[str, Callable[[RunSummary], tuple[Any, ...]]] = {
    "started": lambda r: (not r.is_running, _newest(r)),
    "name": lambda r: (r.name.casefold(), r.name),
    "status": lambda r: (
        _STATUS_ORDER.index(r.status) if r.status in _STATUS_ORDER else len(_STATUS_ORDER),
        _newest(r),
    ),
    "loss": lambda r: (*_unknown_last(r.last_loss), _newest(r)),
    "eval": lambda r: (*_unknown_last(r.best_eval_loss), _newest(r)),
    "vram": lambda r: (*_unknown_last(-r.peak_vram if r.peak_vram is not None else None), _newest(r)),
    "duration": lambda r: (*_unknown_last(-r.duration if r.duration is not None else None), _newest(r)),
    "spikes": lambda r: (*_unknown_last(-r.spikes if r.spikes is not None else None), _newest(r)),
}

SORT_KEYS: tuple[str, ...] = tuple(_SORTS)
"""Orders ``loratop ls --sort`` accepts: ``started`` (running first, then newest), ``name``,
``status`` (running, then failures, then finished), ``loss`` (final loss, lowest first),
``eval`` (best eval loss, lowest first),
``vram`` (peak, highest first), ``duration`` (longest first), ``spikes`` (most first).
Unknown values sort last; ties go newest first."""


def sort_runs(runs: list[RunSummary], key: str = "started") -> list[RunSummary]:
    """The runs in the order ``key`` names (one of :data:`SORT_KEYS`)."""
    if key not in _SORTS:
        raise ValueError(f"unknown sort key {key!r}; expected one of {', '.join(SORT_KEYS)}")
    return sorted(runs, key=_SORTS[key])


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run folder (it holds an ``events.jsonl``)."""
    return (path / EVENTS).is_file()


def resolve_parent(run_dir: Path, parent: str | None) -> Path | None:
    """The parent run's folder, if it is still around.

    A parent recorded as an absolute path survives a move of the whole runs folder
    (or a copy to another machine) when a sibling of ``run_dir`` has the same name.

    Args:
        run_dir: The child run's folder.
        parent: The child's recorded ``parent`` (a run folder or a config file), or ``None``.

    Returns:
        The parent path if it is a run folder, else a same-named sibling of ``run_dir``
        that is a run folder (or one archived beside it), else ``None`` (no parent, a config
        file, or gone).
    """
    if not parent:
        return None
    path = Path(parent)
    if is_run_dir(path):
        return path
    for sibling in (run_dir.parent / path.name, run_dir.parent / ARCHIVE / path.name):
        if path.name and is_run_dir(sibling) and sibling.resolve() != run_dir.resolve():
            return sibling
    return None


ARCHIVE = "archive"
"""The folder under the runs folder that archived runs are moved into (:mod:`core.archive`)."""


CONFIG_SUFFIXES = (".yaml", ".yml")


def parent_label(run_dir: Path, parent: str | None) -> str:
    """Short name of a run's parent.

    Returns:
        The parent run's folder name (``<name> (archived)`` once archived); a config file's
        name; ``<name> (gone)`` for a parent run that is nowhere to be found; ``–`` when there
        is no parent.
    """
    if not parent:
        return "–"
    resolved = resolve_parent(run_dir, parent)
    if resolved is not None:
        archived = resolved.parent.name == ARCHIVE and resolved.parent.resolve() != run_dir.parent.resolve()
        return f"{resolved.name} (archived)" if archived else resolved.name
    path = Path(parent)
    if path.suffix in CONFIG_SUFFIXES or path.is_file():
        return path.name
    return f"{path.name or parent} (gone)"


ATTENTION = frozenset({"q_proj", "k_proj", "v_proj", "o_proj"})
MLP = frozenset({"gate_proj", "up_proj", "down_proj"})


def targets_label(targets: Any) -> str:
    """``all7``, ``attn``, ``mlp``, ``all-linear``, or how many modules (``5mod``)."""
    if isinstance(targets, str):
        return targets
    if not isinstance(targets, list) or not targets:
        return "?"
    names = frozenset(str(t) for t in targets)
    if names == {"all-linear"}:
        return "all-linear"
    if names == ATTENTION | MLP:
        return "all7"
    if names == ATTENTION:
        return "attn"
    if names == MLP:
        return "mlp"
    return f"{len(names)}mod"


def knob_label(config: dict[str, Any] | None) -> str:
    """The key knobs in a dozen characters: ``r8 α16 lr2e-3 b8×1 all7``; ``?`` without a config."""
    if config is None:
        return "?"
    lora = config.get("lora") or {}
    training = config.get("training") or {}

    def num(value: Any, style: Callable[[float], str] = lambda v: f"{v:g}") -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return style(float(value))
        return "?"

    batch = f"{num(training.get('per_device_train_batch_size'))}×{num(training.get('gradient_accumulation_steps'))}"
    return " ".join(
        [
            f"r{num(lora.get('r'))}",
            f"α{num(lora.get('lora_alpha'))}",
            f"lr{num(training.get('learning_rate'), sci)}",
            f"b{batch}",
            targets_label(lora.get("target_modules")),
            *_ranks_knob(config.get("distributed")),
        ]
    )


def _ranks_knob(section: Any) -> list[str]:
    """``×4`` for a run of 4 ranks (per node × nodes); nothing for one process."""
    if not isinstance(section, dict):
        return []
    per, nodes = section.get("nproc_per_node", 1), section.get("nnodes", 1)
    if not (isinstance(per, int) and isinstance(nodes, int)) or per * nodes <= 1:
        return []
    return [f"×{per * nodes}"]


class RunNotFound(Exception):
    """No run matches; the message says where loratop looked and which names came close."""

    def __init__(self, message: str, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.suggestions = list(suggestions)
        """The closest run names (a did-you-mean), best first; empty when none is close."""


class AmbiguousRun(RunNotFound):
    """More than one run matches a prefix or suffix; :attr:`candidates` lists them all."""

    def __init__(self, message: str, candidates: Sequence[str]) -> None:
        super().__init__(message)
        self.candidates = list(candidates)


CANDIDATES_SHOWN = 4
"""An ambiguous run name lists this many candidates, then "and N more"."""

ELLIPSIS = "…"
"""Where ``loratop ls`` cut a long name on a narrow terminal (``tiny-cpu-demo-…261129-075650``)."""


def run_names(root: Path) -> list[str]:
    """The names of the run folders under ``root``, sorted (empty when there is no such folder)."""
    try:
        return sorted(p.name for p in root.iterdir() if is_run_dir(p))
    except OSError:
        return []


def matching_runs(given: str, names: Sequence[str]) -> list[str]:
    """The names ``given`` picks out: a prefix or a suffix of each (or both ends of a name
    that ``ls`` cut in the middle, ``tiny-cpu-demo-…261129-075650``), in ``names``' order."""
    if not given:
        return []
    if ELLIPSIS in given:
        head, tail = given.split(ELLIPSIS, 1)
        return [n for n in names if n.startswith(head) and n.endswith(tail) and len(n) >= len(head) + len(tail)]
    return [n for n in names if n.startswith(given) or n.endswith(given)]


def closest_names(given: str, names: Sequence[str], limit: int = 3) -> list[str]:
    """A did-you-mean: names that hold ``given`` whole, then the most alike (:mod:`difflib`)."""
    import difflib

    holding = [n for n in names if given and given in n]
    alike = difflib.get_close_matches(given, names, n=limit, cutoff=0.6)
    return list(dict.fromkeys([*holding, *alike]))[:limit]


def listed(names: Sequence[str], shown: int = CANDIDATES_SHOWN) -> str:
    """``a, b, c, d and 3 more``: a few names of many, for a one-line message."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


def find_run(name_or_dir: str | None, root: Path = DEFAULT_ROOT, *, partial: bool = True) -> Path:
    """The run folder a user means: the one function every command that takes a RUN asks.

    Accepted, in this order: a run folder's path; a run's full name under ``root``; with
    ``partial``, a unique prefix or suffix of a name under ``root`` (``tiny-cpu-demo-2026``,
    the time stamp ``261129-075650``) or a name as ``loratop ls`` cut it
    (``tiny-cpu-demo-…261129-075650``). ``None`` means the latest run.

    Args:
        name_or_dir: What the user typed, or ``None``.
        root: Where runs live (``--runs-dir``).
        partial: Also accept a prefix or suffix; ``False``: only a path or a full name.

    Raises:
        AmbiguousRun: Several runs match; the message names a few of them.
        RunNotFound: None does; the message suggests the closest names.
    """
    if name_or_dir is None:
        runs = list_runs(root)
        if not runs:
            raise RunNotFound(f"no runs under {root}/ (start one with: loratop demo)")
        return max(runs, key=lambda r: r.started_at or 0).run_dir
    for candidate in (Path(name_or_dir), root / name_or_dir):
        if is_run_dir(candidate):
            return candidate
    names = run_names(root)
    if partial:
        matches = matching_runs(name_or_dir, names)
        if len(matches) == 1:
            return root / matches[0]
        if matches:
            raise AmbiguousRun(
                f"{name_or_dir!r} matches {len(matches)} runs under {root}/: {listed(matches)}; "
                "give more of the name (or its time stamp)",
                matches,
            )
    close = closest_names(name_or_dir, names)
    hint = f"; did you mean {listed(close)}?" if close else ""
    raise RunNotFound(f"no run {name_or_dir!r}: not a folder with events.jsonl, nor a run under {root}/{hint}", close)
