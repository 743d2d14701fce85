"""The next run, proposed from what a finished run recorded (``loratop next``, the monitor's ``n``).

:func:`next_run` reads a run's own record, folded into a :class:`~core.run_state.RunState`, and
proposes one concrete config change per finding, most important first, each with the evidence
line it came from:

1. **out of memory** (``run_finished`` status ``oom`` and its post-mortem): the first of the
   trainer's :data:`~core.oom_forecast.OOM_SUGGESTIONS` the config can still take: half the
   micro-batch with the accumulation doubled (the effective batch stays), else a shorter
   ``max_seq_length`` (half the batch that ran out), else gradient checkpointing;
2. **severe or fatal spikes**: warm-up when the first one came in the first
   :data:`EARLY_SPIKE_STEPS` steps at the full rate with no warm-up before it, else half the
   learning rate the run broke at (the rate recorded at that step, when lower than the peak);
3. **overfitting** (the trainer's alert): more ``lora_dropout`` (0.05, then 0.1), else fewer steps;
4. **early stopping**: fewer steps, ending at the best evaluation's step;
5. **a starved GPU** (the trainer's ``gpu_starved`` alert): the first knob the alert names;
6. **spills** of paged optimizer state: gradient checkpointing, else half the micro-batch.

Nothing is invented: a ``warn`` spike, a low busy % without an alert naming a cause, or a
finding no config knob can express gives no proposal (the last is said as a note). When two
findings want the same knob the higher-ranked keeps it, and a note says what was dropped.
Every proposal is checked against the schema on top of those before it.

Pure: no I/O, no torch, no Textual (pydantic through the schema); :func:`next_run_yaml` is
the text ``loratop next --write`` saves.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loratop.core import events as ev
from loratop.core.gpu_busy import GPU_STARVED, fmt_pct
from loratop.core.oom_forecast import EXPANDABLE_SEGMENTS
from loratop.core.run_state import RunState
from loratop.core.value_format import format_value
from loratop.core.yaml_files import load_yaml
from loratop.preflight.config import RunConfig, dump_config, field_value, validate_tree
from loratop.preflight.config_rewrite import LayoutLost, rewrite_config
from loratop.preflight.estimate import fmt_size

OOM, SPIKES, OVERFIT, EARLY_STOP = "oom", "spikes", "overfitting", "early_stop"
STARVED, SPILLS = "gpu_starved", "spills"
FINDINGS = (OOM, SPIKES, OVERFIT, EARLY_STOP, STARVED, SPILLS)
"""Every finding, most important first: a crash, then divergence, then wasted steps, then speed."""

EARLY_SPIKE_STEPS = 10
"""A severe spike by this step, at the full rate with no warm-up before it, calls for warm-up
rather than a lower rate: with a too-high rate, loss can jump 10–25× within the first ten steps
(DESIGN.md), while LoRA's B matrices still start from zero."""

MIN_WARMUP_STEPS = 10
"""The shortest warm-up proposed (in steps)."""

DROPOUT_STEPS = (0.05, 0.1)
"""The ``lora_dropout`` values proposed against overfitting, in turn: the QLoRA paper's 0.05
(above 13B) and 0.1 (up to 13B); past 0.1 fewer steps are proposed instead."""

EVIDENCE_CHARS = 160
"""A quoted message (an error, an alert) is cut to this many characters in an evidence line."""


@dataclass(frozen=True)
class Change:
    """One knob's value, before and after."""

    knob: str
    """Dotted config path, e.g. ``training.learning_rate``."""
    old: Any
    new: Any

    def text(self) -> str:
        return f"{self.knob}: {format_value(self.old)} → {format_value(self.new)}"


@dataclass(frozen=True)
class Proposal:
    """One config change for the next run, from one finding of this run's record."""

    rank: int
    """1 for the most important; the order of :data:`FINDINGS`, after conflicts."""
    finding: str
    """One of :data:`FINDINGS`."""
    knob: str
    """The knob it changes, e.g. ``training.learning_rate``."""
    old: Any
    new: Any
    reason: str
    """One line: why this change, and why this value."""
    evidence: str
    """What the run recorded that calls for it (step, value, event)."""
    also: tuple[Change, ...] = ()
    """Knobs changed with it so that the change means what it says (the accumulation that keeps
    the effective batch when the micro-batch is halved)."""

    @property
    def changes(self) -> dict[str, Any]:
        """Every knob it sets, dotted path → new value."""
        return {self.knob: self.new, **{c.knob: c.new for c in self.also}}

    def headline(self) -> str:
        """``training.learning_rate: 0.03 → 0.015`` (and ``, with …`` for what changes with it)."""
        head = Change(self.knob, self.old, self.new).text()
        return head + "".join(f", with {c.text()}" for c in self.also)


@dataclass
class NextRun:
    """What a run's record proposes for the next run."""

    proposals: list[Proposal] = field(default_factory=list)
    """Most important first."""
    notes: list[str] = field(default_factory=list)
    """Findings that gave no proposal, and why (nothing the config can express, a knob taken by
    a more important finding, a value the schema refuses)."""

    @property
    def changes(self) -> dict[str, Any]:
        """Every proposed knob, dotted path → new value."""
        out: dict[str, Any] = {}
        for proposal in self.proposals:
            out.update(proposal.changes)
        return out

    def lines(self, width: int = 80) -> list[str]:
        """The proposals as ``loratop next`` prints them, wrapped at ``width`` columns."""
        if not self.proposals:
            lines = ["no proposal: nothing in this run's record calls for a change"]
        else:
            lines = []
            for p in self.proposals:
                lines += textwrap.wrap(f"{p.rank}. {p.headline()}", width, subsequent_indent="   ")
                lines += textwrap.wrap(p.reason, width, initial_indent="   ", subsequent_indent="   ")
                lines += textwrap.wrap(f"evidence: {p.evidence}", width, initial_indent="   ", subsequent_indent="   ")
        for note in self.notes:
            lines += textwrap.wrap(f"note: {note}", width, subsequent_indent="   ")
        return lines


@dataclass(frozen=True)
class _Candidate:
    finding: str
    changes: tuple[Change, ...]
    reason: str
    evidence: str
    alternatives: tuple[_Candidate, ...] = ()
    """What the finding proposes instead, in order, where a higher-ranked finding took this one's
    knob or the schema refuses it (the starved GPU's check may name several knobs)."""


def propose(state: RunState, config: RunConfig | Mapping[str, Any]) -> list[Proposal]:
    """The proposals of :func:`next_run`, most important first (its notes left out)."""
    return next_run(state, config).proposals


def next_run(state: RunState, config: RunConfig | Mapping[str, Any]) -> NextRun:
    """One config change per finding of a run's record, ranked, each with its evidence.

    Args:
        state: The run's events, folded (:func:`core.run_summary.fold_run`).
        config: The run's config: its ``config.yaml`` as read, or the validated config.

    Returns:
        The proposals (most important first) and the notes on findings that gave none.

    Raises:
        ValueError: ``config`` does not pass the schema (a run's own config always does).
    """
    tree = config.model_dump(mode="json") if isinstance(config, RunConfig) else dict(config)
    cfg, problems = validate_tree(tree)
    if cfg is None:
        raise ValueError("; ".join(problems.values()))
    plan = NextRun()
    candidates: list[_Candidate] = []
    for finder in (_oom, _spikes, _overfitting, _early_stop, _starved, _spills):
        found = finder(state, cfg, plan.notes)
        if found is not None:
            candidates.append(found)
    taken: dict[str, str] = {}
    accepted: dict[str, Any] = {}
    for found in candidates:
        for candidate in (found, *found.alternatives):  # the first one this plan can take
            knobs = [c.knob for c in candidate.changes]
            clash = next((k for k in knobs if k in taken), None)
            if clash is not None:
                plan.notes.append(
                    f"{candidate.changes[0].text()} (for {_TITLES[candidate.finding]}) is not proposed: {clash} "
                    f"keeps the change for {_TITLES[taken[clash]]}, which ranks higher"
                )
                continue
            wanted = {**accepted, **{c.knob: c.new for c in candidate.changes}}
            checked, problems = validate_tree(_with_values(tree, wanted))
            if checked is None:
                plan.notes.append(
                    f"{_TITLES[candidate.finding]}: {candidate.changes[0].text()} is refused by the schema "
                    f"({'; '.join(problems.values())}): not proposed"
                )
                continue
            accepted = wanted
            taken.update((k, candidate.finding) for k in knobs)
            first, *rest = candidate.changes
            plan.proposals.append(
                Proposal(
                    len(plan.proposals) + 1,
                    candidate.finding,
                    first.knob,
                    first.old,
                    first.new,
                    candidate.reason,
                    candidate.evidence,
                    tuple(rest),
                )
            )
            break
    return plan


_TITLES = {
    OOM: "the OOM",
    SPIKES: "the spikes",
    OVERFIT: "overfitting",
    EARLY_STOP: "early stopping",
    STARVED: "the starved GPU",
    SPILLS: "the spills",
}


def next_run_yaml(config_text: str, plan: NextRun, parent: Path) -> str:
    """The run's ``config.yaml`` with the proposals applied, ``parent`` set to the run and
    ``output_dir`` unset (a new run gets a new folder), its layout kept
    (:func:`preflight.config_rewrite.rewrite_config`), under a comment line per change.

    Raises:
        ValueError: The result does not pass the schema (a proposal is always checked against it).
    """
    header = "".join(
        f"# loratop next from {parent.name}: {p.headline()} ({_TITLES[p.finding]})\n" for p in plan.proposals
    )
    wanted = {**plan.changes, "output_dir": None, "parent": str(parent)}
    try:
        body = rewrite_config(config_text, wanted)
    except (LayoutLost, ValueError, yaml.YAMLError):
        body = dump_config(RunConfig.model_validate(_with_values(load_yaml(config_text) or {}, wanted)))
    checked, problems = validate_tree(load_yaml(body) or {})
    if checked is None:
        raise ValueError("; ".join(problems.values()))
    return header + body


# -- the findings ----------------------------------------------------------------------------


def _oom(state: RunState, cfg: RunConfig, notes: list[str]) -> _Candidate | None:
    finished = state.finished
    if finished is None or finished.get("status") != ev.OOM:
        return None
    t = cfg.training
    error = finished.get("error") or {}
    step = error.get("step", finished.get("step"))
    tokens = error.get("batch_tokens")
    message = str(error.get("message") or "out of memory").splitlines()[0]
    batch = f", its largest micro-batch {tokens:,} padded tokens" if isinstance(tokens, int) and tokens > 0 else ""
    evidence = f"run_finished: oom at step {_step(step)}{batch}: {_clip(message)}"
    if t.per_device_train_batch_size > 1:
        b, g = t.per_device_train_batch_size, t.gradient_accumulation_steps
        new_b, new_g = b // 2, g * 2
        keeps = "the effective batch stays" if new_b * new_g == b * g else f"effective batch {b * g} → {new_b * new_g}"
        return _Candidate(
            OOM,
            (
                Change("training.per_device_train_batch_size", b, new_b),
                Change("training.gradient_accumulation_steps", g, new_g),
            ),
            f"a micro-batch of {b} ran out of memory: half of it per forward pass, twice the passes per "
            f"optimizer step ({keeps}); peak memory grows with the micro-batch",
            evidence,
        )
    longest = min(t.max_seq_length, tokens) if isinstance(tokens, int) and tokens > 0 else t.max_seq_length
    new_len = max(8, longest // 2 // 8 * 8)
    if new_len < t.max_seq_length:
        return _Candidate(
            OOM,
            (Change("training.max_seq_length", t.max_seq_length, new_len),),
            f"the micro-batch is already 1 row and the batch that ran out held {longest:,} tokens: rows "
            f"truncated to {new_len:,} tokens halve the longest batch's activations",
            evidence,
        )
    if not t.gradient_checkpointing:
        return _Candidate(
            OOM,
            (Change("training.gradient_checkpointing", False, True),),
            "micro-batch 1 and a short max_seq_length still ran out: checkpointing recomputes activations "
            "in the backward pass instead of keeping every layer's (~30% more compute)",
            evidence,
        )
    notes.append(
        f"the OOM ({evidence}) leaves no config knob to turn: micro-batch 1, max_seq_length {t.max_seq_length}, "
        f"checkpointing on; {EXPANDABLE_SEGMENTS} (an environment variable) or a larger GPU"
    )
    return None


def _spikes(state: RunState, cfg: RunConfig, notes: list[str]) -> _Candidate | None:
    bad = [s for s in state.spikes if s.get("severity") in ("severe", "fatal") and isinstance(s.get("step"), int)]
    if not bad:
        return None
    first = min(bad, key=lambda s: int(s["step"]))
    step = int(first["step"])
    t = cfg.training
    peak = t.learning_rate
    at = _lr_at(state, step)
    fatal = sum(1 for s in bad if s.get("severity") == "fatal")
    count = f"{len(bad)} severe/fatal" + (f" ({fatal} fatal)" if fatal else "")
    loss, base = first.get("loss"), first.get("baseline")
    level = (
        f"loss {_num(loss)} against {_num(base)} before" if _finite(loss) and _finite(base) else f"loss {_num(loss)}"
    )
    rate = f"lr {format_value(at)}" if at is not None else "no lr recorded"
    evidence = (
        f"spike at step {step}: {first.get('severity')} {first.get('kind')}, {level}, {rate} at that step; "
        f"{count} in the run"
    )
    warmup = _warmup_steps(t.warmup_steps, _total_steps(state, cfg))
    at_peak = at is not None and math.isclose(at, peak, rel_tol=0.05)
    if step <= EARLY_SPIKE_STEPS and at_peak and warmup is not None and warmup < step:
        new = max(MIN_WARMUP_STEPS, 2 * step)
        return _Candidate(
            SPIKES,
            (Change("training.warmup_steps", t.warmup_steps, float(new)),),
            f"the run broke at step {step}, already at its full rate {format_value(peak)}: a warm-up over {new} "
            "steps lets the adapters (B = 0 at the start) settle before the full rate",
            evidence,
        )
    broke_at = min(peak, at) if at is not None and at > 0 else peak
    new_lr = float(f"{broke_at / 2:.3g}")
    where = "its peak" if broke_at == peak else f"below its peak {format_value(peak)}, still warming up"
    return _Candidate(
        SPIKES,
        (Change("training.learning_rate", peak, new_lr),),
        f"the run broke at lr {format_value(broke_at)} ({where}): a peak of half that rate stays below it",
        evidence,
    )


def _overfitting(state: RunState, cfg: RunConfig, notes: list[str]) -> _Candidate | None:
    alert = state.overfitting
    if alert is None:
        return None
    since = re.search(r"overfitting since step (\d+)", str(alert.get("message", "")))
    evidence = f"alert at step {_step(alert.get('step'))}: {_clip(str(alert.get('message', 'overfitting')))}"
    dropout = cfg.lora.lora_dropout
    higher = next((d for d in DROPOUT_STEPS if d > dropout + 1e-12), None)
    if higher is not None:
        return _Candidate(
            OVERFIT,
            (Change("lora.lora_dropout", dropout, higher),),
            f"eval loss rose while training loss fell: the adapter learns the training rows; dropout "
            f"{format_value(higher)} on its input regularises it (the QLoRA paper's value)",
            evidence,
        )
    best = _best_step(state)
    if best is None:
        best = int(since.group(1)) if since else None
    steps = _fewer_steps(state, cfg, best)
    if steps is None:
        notes.append(f"overfitting ({evidence}) with lora_dropout {format_value(dropout)} and no best step to stop at")
        return None
    return _Candidate(
        OVERFIT,
        (steps,),
        f"lora_dropout is already {format_value(dropout)}: end the run at the best evaluation (step {best}) "
        "instead of training past it",
        evidence,
    )


def _early_stop(state: RunState, cfg: RunConfig, notes: list[str]) -> _Candidate | None:
    finished = state.finished
    if finished is None or finished.get("stopped_by") != "early stopping":
        return None
    best = finished.get("adapter_step")
    best = best if isinstance(best, int) else _best_step(state)
    last = finished.get("step", state.last_step)
    evaluation = state.best_eval
    loss = evaluation.get("eval_loss") if evaluation is not None else None
    evidence = (
        f"run_finished: stopped by early stopping at step {_step(last)}; best eval loss "
        f"{f'{loss:.4f}' if _finite(loss) else '?'} at step {_step(best)} (its adapter was kept)"
    )
    steps = _fewer_steps(state, cfg, best)
    if steps is None:
        notes.append(f"early stopping ({evidence}): no step count to propose")
        return None
    return _Candidate(
        EARLY_STOP,
        (steps,),
        f"the steps after the best evaluation (step {best}) only made the eval loss worse: the same run, "
        "ended there, costs less",
        evidence,
    )


def _starved(state: RunState, cfg: RunConfig, notes: list[str]) -> _Candidate | None:
    alert = next((a for a in reversed(state.alerts) if a.get("kind") == GPU_STARVED), None)
    if alert is None:
        return None
    busy = alert.get("busy_pct")
    mean = state.mean_busy
    run_mean = f"; {fmt_pct(mean)} busy over the whole run" if mean is not None else ""
    head = f"gpu_starved alert at step {_step(alert.get('step'))}: GPU busy {fmt_pct(busy)}{run_mean}"
    named = [str(k) for k in alert.get("knobs") or []]
    options: list[_Candidate] = []
    for text in named:
        change = _named_knob(text, cfg)
        if change is None:
            continue
        also: tuple[Change, ...] = ()
        g = cfg.training.gradient_accumulation_steps
        if change.knob == "training.per_device_train_batch_size" and g > 1 and "halve gradient" in text:
            also = (Change("training.gradient_accumulation_steps", g, max(1, g // 2)),)
        options.append(
            _Candidate(
                STARVED,
                (change, *also),
                "the GPU waited on the host most of the time; this is the first knob the trainer's own check "
                "named for this run that the plan can take (same math, faster steps)",
                f"{head}; the trainer named: {'; '.join(named)}",
            )
        )
    if not options:
        notes.append(f"the starved GPU ({head}) names no knob this config can still take")
        return None
    first, *rest = options
    return dataclasses.replace(first, alternatives=tuple(rest))


def _spills(state: RunState, cfg: RunConfig, notes: list[str]) -> _Candidate | None:
    if not state.spills:
        return None
    total = sum(s.get("bytes") or 0 for s in state.spills)
    steps = [step for s in state.spills if isinstance(step := s.get("step"), int)]
    methods = sorted({str(s.get("method")) for s in state.spills if s.get("method")})
    how = f" ({', '.join(methods)})" if methods else ""
    first = f", the first at step {min(steps)}" if steps else ""
    evidence = f"{len(state.spills)} spill events{how}, {fmt_size(total)} moved to host RAM{first}"
    t = cfg.training
    if not t.gradient_checkpointing:
        return _Candidate(
            SPILLS,
            (Change("training.gradient_checkpointing", False, True),),
            "the driver evicted paged optimizer state to host RAM (GPU memory was full): checkpointing frees "
            "most activation memory for it (~30% more compute, no more round trips over PCIe)",
            evidence,
        )
    if t.per_device_train_batch_size > 1:
        b, g = t.per_device_train_batch_size, t.gradient_accumulation_steps
        return _Candidate(
            SPILLS,
            (
                Change("training.per_device_train_batch_size", b, b // 2),
                Change("training.gradient_accumulation_steps", g, g * 2),
            ),
            "the driver evicted paged optimizer state to host RAM (GPU memory was full): a smaller micro-batch "
            "leaves it room; the accumulation doubles so the effective batch stays",
            evidence,
        )
    notes.append(f"the spills ({evidence}) leave no config knob to turn: micro-batch 1, checkpointing on")
    return None


# -- helpers -----------------------------------------------------------------------------------


def _lr_at(state: RunState, step: int) -> float | None:
    """The learning rate recorded at ``step`` (the last recorded at or before it)."""
    i = bisect.bisect_right(state.steps, step) - 1
    if i < 0:
        return None
    lr = state.lr[i]
    return lr if math.isfinite(lr) else None


def _total_steps(state: RunState, cfg: RunConfig) -> int | None:
    if cfg.training.max_steps > 0:
        return cfg.training.max_steps
    return state.max_steps if isinstance(state.max_steps, int) and state.max_steps > 0 else None


def _warmup_steps(warmup: float, total: int | None) -> float | None:
    """Warm-up in steps (a value below 1 is a fraction of the run); ``None`` when that cannot be told."""
    if warmup >= 1:
        return warmup
    return warmup * total if total else (0.0 if warmup == 0 else None)


def _best_step(state: RunState) -> int | None:
    best = state.best_eval
    step = best.get("step") if best is not None else None
    return step if isinstance(step, int) and step > 0 else None


def _fewer_steps(state: RunState, cfg: RunConfig, best: int | None) -> Change | None:
    """The run ended at ``best``: ``max_steps`` where the config counts steps, else the epochs scaled."""
    t = cfg.training
    if best is None or best <= 0:
        return None
    if t.max_steps > 0:
        return Change("training.max_steps", t.max_steps, best) if best < t.max_steps else None
    last = state.max_steps if isinstance(state.max_steps, int) and state.max_steps > 0 else state.last_step
    if not last or best >= last:
        return None
    epochs = max(0.01, round(t.num_train_epochs * best / last, 2))
    return Change("training.num_train_epochs", t.num_train_epochs, epochs) if epochs < t.num_train_epochs else None


_NAMED = re.compile(r"^\s*([a-z_]+\.[a-z_0-9]+):\s*([^\s(]+)")


def _named_knob(text: str, cfg: RunConfig) -> Change | None:
    """``training.dataloader_num_workers: 2 (...)`` as a change, when it is a knob of the schema with a
    value that differs from the config's."""
    match = _NAMED.match(text)
    if match is None:
        return None
    path, raw = match.groups()
    try:
        old = field_value(cfg, path)
        new = load_yaml(raw)
    except (AttributeError, ValueError):
        return None
    if new is None or new == old or (old is not None and isinstance(new, str) != isinstance(old, str)):
        return None  # already so, or not a value of this knob ("twice as many")
    return Change(path, old, new)


def _with_values(tree: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    for path, value in values.items():
        section, _, name = path.rpartition(".")
        node = out
        for part in section.split(".") if section else []:
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[name] = value
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "?"


def _step(value: Any) -> str:
    return str(value) if isinstance(value, int) else "?"


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EVIDENCE_CHARS else text[: EVIDENCE_CHARS - 1] + "…"
