"""A run as loratop knows it: a plain model fed with events (standard library only).

The dashboard folds runs into it, and so does the trainer, once, to leave a finished run's
summary (:mod:`core.run_summary`). In the dashboard, handlers append to it; a timer reads
it a few times a second and pushes what changed to the widgets, so the data rate never sets
the redraw rate. Series are kept in compact ``array`` buffers: a million steps cost tens of
megabytes, not gigabytes.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from loratop.core import events as ev
from loratop.core.cpu_busy import CpuSample, cpu_contended
from loratop.core.gpu_busy import GPU_STARVED, busy_pct, mfu
from loratop.core.run_dir import LOST
from loratop.core.run_index import GPU, Columns, Index

# Run phases shown in the header, besides the run_finished statuses: the protocol's constants
# (LOST: :attr:`RunState.lost_cause` says how; PAUSED: :attr:`RunState.paused`; UNKNOWN:
# :attr:`RunState.not_proven`).
STARTING, RUNNING, PAUSED, UNKNOWN = ev.STARTING, ev.RUNNING, ev.PAUSED, ev.UNKNOWN


@dataclass
class RunState:
    """Everything the dashboard shows about one run, derived from its events."""

    run_dir: Path
    steps: array[int] = field(default_factory=lambda: array("q"))
    """Optimizer step numbers, one per ``step`` event."""
    loss: array[float] = field(default_factory=lambda: array("d"))
    """Each step's own loss (NaN where the trainer reported NaN)."""
    lr: array[float] = field(default_factory=lambda: array("d"))
    grad_norm: array[float] = field(default_factory=lambda: array("d"))
    tokens: array[int] = field(default_factory=lambda: array("q"))
    """Non-padding tokens seen so far, at each step."""
    step_t: array[float] = field(default_factory=lambda: array("d"))
    """Unix time of each step event."""
    started: ev.RunStartedEvent | None = None
    finished: ev.RunFinishedEvent | None = None
    memory: ev.MemoryEvent | None = None
    """The latest memory sample."""
    peak_gpu_used: int | None = None
    """Highest NVML used bytes on any GPU so far (of any rank); ``None`` without a GPU reading."""
    peak_rss: int | None = None
    """Highest host RSS so far (of any rank)."""
    ranks: ev.RanksEvent | None = None
    """The latest report of every rank's memory (a run of several ranks)."""
    rank_peaks: dict[int, dict[str, int]] = field(default_factory=dict)
    """Per rank: the highest ``gpu`` used and ``rss`` seen."""
    alerts: list[ev.AlertEvent] = field(default_factory=list)
    """Things the user must see: a rank lost, overfitting."""
    evals: list[ev.EvalEvent] = field(default_factory=list)
    """Every evaluation of the held-out loss, in order."""
    mem_series: array[int] = field(default_factory=lambda: array("q"))
    """Memory over time, one value per sample: GPU 0's NVML used bytes, or host RSS
    when there is no GPU reading (see :attr:`mem_series_kind`)."""
    mem_series_kind: str | None = None
    """``gpu`` or ``host``: what :attr:`mem_series` holds."""
    busy: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=600))
    """(time, NVML busy %) of the GPU rank 0 trains on, the latest samples."""
    cpu: deque[CpuSample] = field(default_factory=lambda: deque(maxlen=240))
    """The latest samples of the trainer's CPU time and its cores' busy time (:mod:`core.cpu_busy`)."""
    busy_sum: float = 0.0
    busy_n: int = 0
    """Busy % summed and counted over the samples taken while steps ran (for the run's mean)."""
    checkpoints: list[ev.CheckpointEvent] = field(default_factory=list)
    spikes: list[ev.SpikeEvent] = field(default_factory=list)
    spills: list[ev.SpillEvent] = field(default_factory=list)
    oom_risk: ev.OomRiskEvent | None = None
    """The latest OOM-risk level (sent when it changes)."""
    paged: ev.PagedStateEvent | None = None
    """Paged optimizer state, accounted at the first step."""
    messages: deque[str] = field(default_factory=lambda: deque(maxlen=50))
    """The trainer's phase messages (``log`` events), newest last."""
    message_seq: int | None = None
    """The ``seq`` of the newest message: what came after it (a checkpoint it announced) can tell."""
    first_t: float | None = None
    """Time of the first event (the trainer's start)."""
    last_t: float | None = None
    events_seen: int = 0
    garbage: int = 0
    """Lines skipped because they were not valid events."""
    filled_from_file: int = 0
    """Events that missed the pipe and were read from ``events.jsonl``."""
    trainer_gone: bool = False
    """The trainer process is gone without a ``run_finished`` (killed, crashed hard)."""
    lost_cause: str | None = None
    """How it went, once :attr:`trainer_gone`: ``killed by SIGKILL``, ``trainer gone, no report``."""
    folder_note: str | None = None
    """Set when the run folder was removed under a live run: what became of the trainer."""
    paused: str | None = None
    """Why the live trainer makes no progress: it is stopped (``kill -CONT PID`` resumes it)."""
    not_proven: str | None = None
    """Why this machine cannot tell whether the trainer still runs (status ``unknown``), or ``None``."""
    version: int = 0
    """Bumped on every change, so a redraw timer can tell whether anything is new."""

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one event into the state. An event that cannot be folded (a value no decoder
        check foresaw) is counted in :attr:`garbage`, never raised: one run's damage must not
        take down the screen or the list that shows it."""
        try:
            self._apply(event)
        except (OverflowError, ValueError, TypeError, AttributeError, KeyError):
            self.garbage += 1

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        t = event.get("t")
        if isinstance(t, (int, float)):
            if self.first_t is None:
                self.first_t = float(t)
            self.last_t = float(t)
        self.events_seen += 1
        self.version += 1
        fold = _FOLDS.get(kind)
        if fold is not None:
            fold(self, event)

    def _step(self, event: dict[str, Any]) -> None:
        # Every value first, then the appends: a value that fails leaves no column longer than another.
        t = event.get("t")
        step, tokens = _int64(event.get("step", len(self.steps) + 1)), _int64(event.get("tokens") or 0)
        loss, lr, grad_norm = _num(event.get("loss")), _num(event.get("lr")), _num(event.get("grad_norm"))
        self.steps.append(step)
        self.loss.append(loss)
        self.lr.append(lr)
        self.grad_norm.append(grad_norm)
        self.tokens.append(tokens)
        self.step_t.append(float(t) if isinstance(t, (int, float)) else math.nan)

    def _started(self, event: dict[str, Any]) -> None:
        self.started = cast(ev.RunStartedEvent, event)

    def _finished(self, event: dict[str, Any]) -> None:
        self.finished = cast(ev.RunFinishedEvent, event)

    def _checkpoint(self, event: dict[str, Any]) -> None:
        self.checkpoints.append(cast(ev.CheckpointEvent, event))

    def _spike(self, event: dict[str, Any]) -> None:
        self.spikes.append(cast(ev.SpikeEvent, event))

    def _spill(self, event: dict[str, Any]) -> None:
        self.spills.append(cast(ev.SpillEvent, event))

    def _oom_risk(self, event: dict[str, Any]) -> None:
        self.oom_risk = cast(ev.OomRiskEvent, event)

    def _paged(self, event: dict[str, Any]) -> None:
        self.paged = cast(ev.PagedStateEvent, event)

    def _alert(self, event: dict[str, Any]) -> None:
        self.alerts.append(cast(ev.AlertEvent, event))

    def _eval(self, event: dict[str, Any]) -> None:
        self.evals.append(cast(ev.EvalEvent, event))

    def _log(self, event: dict[str, Any]) -> None:
        level = event.get("level")
        self.messages.append(f"{level}: {event.get('message')}" if level else str(event.get("message")))
        seq = event.get("seq")
        self.message_seq = seq if isinstance(seq, int) else None

    def apply_index(self, index: Index, last_memory: dict[str, Any] | None) -> None:
        """Fold a run's compact index (:mod:`core.run_index`) into a fresh state: what
        :meth:`apply` of every indexed event would give, in a fraction of the time.

        ``last_memory`` is the last indexed ``memory`` event in full (the panel shows it).
        """
        steps, mem = index.steps, index.memory
        for event in index.rare:
            self.apply(event)
        self.steps = _ints(steps["step"])
        self.loss, self.lr, self.grad_norm, self.step_t = steps["loss"], steps["lr"], steps["grad_norm"], steps["t"]
        self.tokens = _ints(steps["tokens"])
        times = [col[i] for col in (steps["t"], mem["t"]) if col for i in (0, -1)]
        if times:
            self.first_t = min(times + ([self.first_t] if self.first_t is not None else []))
            self.last_t = max(times + ([self.last_t] if self.last_t is not None else []))
        if mem["seq"]:
            self._memory_columns(mem)
            self._busy_columns(mem, steps["t"][0] if steps["t"] else None)
            self.memory = cast(ev.MemoryEvent, last_memory) if last_memory is not None else self.memory
            if last_memory is not None:  # the CPU figures of the moment of attach (the index keeps no column of them)
                self._cpu_sample(last_memory)
        self.events_seen = index.count
        self.garbage = index.skipped
        self.version += 1

    def _busy_columns(self, mem: Columns, first_step_t: float | None) -> None:
        """The busy % series and the run's mean from an index's memory columns, as
        :meth:`_busy_sample` keeps them, at C speed where it can (a million-step attach reads
        half a million samples)."""
        if GPU not in mem["kind"]:
            return  # no GPU sample (a CPU run): nothing was busy
        times, busy = mem["t"], mem["busy"]
        keep = self.busy.maxlen or len(busy)
        self.busy.extend((t, b) for t, b in zip(times[-keep:], busy[-keep:], strict=True) if b == b)  # NaN: none
        if first_step_t is None:
            return
        end = self.finished.get("t") if self.finished else None
        lo = bisect.bisect_left(times, first_step_t)
        hi = bisect.bisect_right(times, end) if isinstance(end, (int, float)) else len(times)
        window = busy[lo:hi]
        total = sum(window)
        if not math.isfinite(total):  # some samples without a reading: leave them out
            window = array("d", (b for b in window if b == b))
            total = sum(window)
        self.busy_sum += total
        self.busy_n += len(window)

    def _memory_columns(self, mem: Columns) -> None:
        peak = finite_extreme(max, mem["max_gpu_used"])
        self.peak_gpu_used = int(peak) if peak is not None else None
        rss = finite_extreme(max, mem["rss"])
        self.peak_rss = int(rss) if rss is not None else None
        kinds, values = mem["kind"], mem["value"]
        last = next((k for k in reversed(kinds) if k == k), None)
        if last is None:
            return
        if kinds.count(last) == len(kinds):  # the usual case: one kind all along
            self.mem_series = _ints(values)
        else:  # the series since the kind last changed, as apply() keeps it
            start = len(kinds)
            while start > 0 and (kinds[start - 1] == last or kinds[start - 1] != kinds[start - 1]):
                start -= 1  # back over this kind's samples and unread ones (NaN)
            pairs = zip(kinds[start:], values[start:], strict=True)
            self.mem_series = array("q", (int(v) for k, v in pairs if k == last))
        self.mem_series_kind = "gpu" if last == GPU else "host"

    def apply_all(self, events: list[dict[str, Any]]) -> None:
        """Fold a batch of events in order."""
        for event in events:
            self.apply(event)

    def _memory(self, event: dict[str, Any]) -> None:
        self.memory = cast(ev.MemoryEvent, event)
        self._cpu_sample(event)
        busy, t = busy_pct(event.get("gpus")), event.get("t")
        if busy is not None and isinstance(t, (int, float)):
            self._busy_sample(float(t), busy)
        rss = event.get("host", {}).get("rss")
        if isinstance(rss, int):
            self.peak_rss = max(self.peak_rss or 0, rss)
        gpus = event.get("gpus") or []
        for gpu in gpus:
            used = gpu.get("used")
            if isinstance(used, int):
                self.peak_gpu_used = max(self.peak_gpu_used or 0, used)
        kind, value = ("gpu", gpus[0].get("used")) if gpus else ("host", rss)
        if isinstance(value, int) and _INT_MIN <= value <= _INT_MAX:
            if kind != self.mem_series_kind:
                self.mem_series = array("q")  # never mix GPU and host figures in one line
                self.mem_series_kind = kind
            self.mem_series.append(value)

    def _cpu_sample(self, event: dict[str, Any]) -> None:
        sample = CpuSample.from_host(event.get("t"), event.get("host"))
        if sample is not None:
            self.cpu.append(sample)

    @property
    def cpu_contended(self) -> bool:
        """Whether other work on the host is taking CPU time from the trainer, lately
        (:func:`core.cpu_busy.cpu_contended`) while it trains; never for a run of several
        ranks (the other ranks' work would read as someone else's)."""
        return self.is_live and self.world_size <= 1 and cpu_contended(self.cpu)

    def _busy_sample(self, t: float, busy: float) -> None:
        self.busy.append((t, busy))
        if self.steps and self.finished is None:  # while training: not loading, not after the end
            self.busy_sum += busy
            self.busy_n += 1

    def recent_busy(self, window_s: float = 30.0) -> float | None:
        """The GPU's mean busy % over the last ``window_s`` seconds of samples; ``None``
        without a reading (a CPU run, or NVML reports no utilisation)."""
        if not self.busy:
            return None
        since = self.busy[-1][0] - window_s
        recent = [b for t, b in self.busy if t >= since]
        return sum(recent) / len(recent)

    @property
    def mean_busy(self) -> float | None:
        """The GPU's mean busy % over the samples taken while steps ran."""
        return self.busy_sum / self.busy_n if self.busy_n else None

    @property
    def gpu_names(self) -> list[str]:
        """The GPUs the run trains on (as torch numbers them), by name; empty on a CPU run."""
        device = self.started.get("device", {}) if self.started else {}
        if device.get("kind") != "cuda":
            return []
        names = device.get("names")
        names = names if isinstance(names, list) and names else [device.get("name")]
        return [str(name) for name in names[: max(1, self.world_size)] if name]

    def mfu(self, tokens_per_s: float | None) -> float | None:
        """Model-FLOPs utilisation at ``tokens_per_s`` (:func:`core.gpu_busy.mfu`)."""
        params = self.started.get("params", {}).get("total") if self.started else None
        return mfu(tokens_per_s, params if isinstance(params, int) else None, self.gpu_names)

    @property
    def starved(self) -> ev.AlertEvent | None:
        """The latest starved-GPU alert, while it stands (the run not finished)."""
        if self.finished is not None:
            return None
        return next((a for a in reversed(self.alerts) if a.get("kind") == GPU_STARVED), None)

    def _ranks(self, event: dict[str, Any]) -> None:
        self.ranks = cast(ev.RanksEvent, event)
        for row in event.get("ranks") or []:
            rank = row.get("rank")
            if not isinstance(rank, int):
                continue
            peaks = self.rank_peaks.setdefault(rank, {})
            gpu = row.get("gpu") or {}
            for name, value in (("gpu", gpu.get("used")), ("rss", row.get("rss"))):
                if isinstance(value, int):
                    peaks[name] = max(peaks.get(name, 0), value)
            if isinstance(gpu.get("used"), int):
                self.peak_gpu_used = max(self.peak_gpu_used or 0, gpu["used"])
            if isinstance(row.get("rss"), int):
                self.peak_rss = max(self.peak_rss or 0, row["rss"])

    # -- derived --------------------------------------------------------------

    @property
    def world_size(self) -> int:
        """Ranks in the run (1 for a single process)."""
        if self.ranks is not None and isinstance(self.ranks.get("world_size"), int):
            return int(self.ranks["world_size"])
        size = self.started.get("device", {}).get("world_size") if self.started else None
        return size if isinstance(size, int) and size > 0 else 1

    @property
    def rank_rows(self) -> list[ev.RankRow]:
        """Every rank's row of the latest ``ranks`` report (empty for a single process)."""
        return list(self.ranks.get("ranks") or []) if self.ranks is not None else []

    def worst_oom_rank(self) -> ev.RankRow | None:
        """The rank whose OOM forecast is the most alarming, among those that have one."""
        from loratop.core.oom_forecast import LEVELS

        rows = [r for r in self.rank_rows if r.get("oom_level") in LEVELS]
        return max(rows, key=lambda r: LEVELS.index(str(r.get("oom_level")))) if rows else None

    @property
    def last_eval(self) -> ev.EvalEvent | None:
        return self.evals[-1] if self.evals else None

    @property
    def best_eval(self) -> ev.EvalEvent | None:
        """The best evaluation as the trainer named it (the last ``eval`` event's ``best_step``),
        else the one with the lowest finite eval loss (the first of equals)."""
        named = self.evals[-1].get("best_step") if self.evals else None
        if isinstance(named, int):
            for e in reversed(self.evals):
                if e.get("step") == named:
                    return e
        best, lowest = None, math.inf
        for e in self.evals:
            loss = e.get("eval_loss")
            if isinstance(loss, (int, float)) and math.isfinite(loss) and loss < lowest:
                best, lowest = e, loss
        return best

    def eval_points(self) -> list[tuple[int, float]]:
        """``(step, eval loss)`` of every evaluation with both (what the charts mark)."""
        return [
            (step, float(loss))
            for e in self.evals
            if isinstance(step := e.get("step"), int)
            and not isinstance(step, bool)
            and isinstance(loss := e.get("eval_loss"), (int, float))
        ]

    @property
    def overfitting(self) -> ev.AlertEvent | None:
        """The latest overfitting alert, if any."""
        return next((a for a in reversed(self.alerts) if a.get("kind") == "overfitting"), None)

    def eval_seconds(self, start: float, end: float) -> float:
        """Seconds spent evaluating between two times (unix): left out of training throughput."""
        total = 0.0
        for e in self.evals:
            t, duration = e.get("t"), e.get("duration_s")
            if isinstance(t, (int, float)) and isinstance(duration, (int, float)) and start < t <= end:
                total += duration
        return total

    @property
    def rank_lost(self) -> ev.AlertEvent | None:
        """The alert that names the rank whose death ended the run, if one did."""
        return next((a for a in self.alerts if a.get("kind") == "rank_lost"), None)

    @property
    def status(self) -> str:
        """``starting``, ``running``, a ``run_finished`` status, ``lost`` or ``unknown``."""
        if self.finished is not None:
            if self.rank_lost is not None:
                return ev.FAILED  # rank 0 may have finished well; the run did not
            return str(self.finished.get("status"))
        if self.trainer_gone:
            return LOST
        if self.not_proven is not None:
            return UNKNOWN
        if self.paused is not None:
            return PAUSED
        return RUNNING if self.started is not None else STARTING

    @property
    def is_live(self) -> bool:
        """Whether the trainer provably may still produce events (its clock runs, it may be signalled)."""
        return self.finished is None and not self.trainer_gone and self.not_proven is None

    def mark_lost(self, cause: str) -> None:
        """The trainer is gone without a report; ``cause`` says how, as far as is known."""
        self.trainer_gone, self.lost_cause, self.not_proven = True, cause, None
        self.version += 1

    @property
    def last_step(self) -> int:
        return self.steps[-1] if self.steps else 0

    @property
    def last_loss(self) -> float | None:
        return self.loss[-1] if self.loss else None

    @property
    def max_steps(self) -> int | None:
        return self.started.get("max_steps") if self.started else None

    @property
    def fraction(self) -> float | None:
        """Trainable fraction from the frozen-base audit."""
        return self.started.get("params", {}).get("fraction") if self.started else None

    @property
    def device_kind(self) -> str | None:
        return self.started.get("device", {}).get("kind") if self.started else None

    @property
    def run_name(self) -> str:
        return str(self.started.get("run_name")) if self.started else self.run_dir.name

    def elapsed(self, now: float) -> float | None:
        """Seconds since the trainer started; frozen at the end once finished, and at its last
        sign of life once it is gone (or cannot be seen from here)."""
        if self.first_t is None:
            return None
        if self.finished:
            end = self.finished["t"]
        elif not self.is_live:
            end = self.last_t if self.last_t is not None else self.first_t
        else:
            end = now
        return max(0.0, end - self.first_t)

    def recent_rate(self, window: int = 20) -> tuple[float, float] | None:
        """(steps per second, tokens per second) over the last ``window`` steps."""
        n = len(self.step_t)
        if n < 2:
            return None
        lo = max(0, n - 1 - window)
        dt = self.step_t[-1] - self.step_t[lo]
        if self.evals:
            dt -= self.eval_seconds(self.step_t[lo], self.step_t[-1])  # evaluating is not training
        if not dt > 0:
            return None
        return (self.steps[-1] - self.steps[lo]) / dt, (self.tokens[-1] - self.tokens[lo]) / dt

    def eta(self) -> float | None:
        """Seconds left at the recent pace, or ``None`` when unknown or finished."""
        rate = self.recent_rate()
        if not self.is_live or rate is None or not self.max_steps or rate[0] <= 0:
            return None
        return max(0.0, (self.max_steps - self.last_step) / rate[0])


def finite_extreme(pick: Callable[[Iterable[float]], float], values: Sequence[float]) -> float | None:
    """``min`` or ``max`` of the finite values (``None`` when there is none): at C speed when
    all are finite, which one C-level ``sum`` tells."""
    if values and math.isfinite(sum(values)):
        return pick(values)
    finite = [x for x in values if math.isfinite(x)]
    return pick(finite) if finite else None


def _ints(column: array[Any]) -> array[int]:
    if column.typecode == "q":
        return column
    try:
        return array("q", map(int, column))
    except ValueError:  # a NaN (a field the trainer left out): as apply() reads it
        return array("q", (int(x) if x == x else 0 for x in column))


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


_INT_MIN, _INT_MAX = ev.INT_MIN, ev.INT_MAX


def _int64(value: Any) -> int:
    """An integer for an ``array('q')`` column; :class:`OverflowError` outside int64."""
    number = int(value)
    if not _INT_MIN <= number <= _INT_MAX:
        raise OverflowError(f"{number} is outside int64")
    return number


_FOLDS: dict[str, Callable[[RunState, dict[str, Any]], None]] = {
    ev.STEP: RunState._step,
    ev.MEMORY: RunState._memory,
    ev.RUN_STARTED: RunState._started,
    ev.RUN_FINISHED: RunState._finished,
    ev.CHECKPOINT: RunState._checkpoint,
    ev.SPIKE: RunState._spike,
    ev.SPILL: RunState._spill,
    ev.OOM_RISK: RunState._oom_risk,
    ev.PAGED_STATE: RunState._paged,
    ev.RANKS: RunState._ranks,
    ev.ALERT: RunState._alert,
    ev.EVAL: RunState._eval,
    ev.LOG: RunState._log,
}
"""How each event type folds into a :class:`RunState`: the one dispatch table of the run model
(an unknown type, from a newer trainer, is counted in ``events_seen`` and left out)."""
