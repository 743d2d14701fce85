"""What the monitor's text panels say, as pure functions of a :class:`RunState`.

Kept apart from the widgets so every label can be tested without an app. Labels are
honest: a number that was not measured is never shown as zero.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from loratop.core import events as ev
from loratop.core.distributed import rank_label
from loratop.core.gpu_busy import fmt_pct
from loratop.core.oom_forecast import LEVELS as OOM_LEVELS
from loratop.core.run_dir import NO_REPORT, SIGKILL_HINT
from loratop.core.run_state import LOST, UNKNOWN, RunState
from loratop.widgets.units import fmt_bytes

if TYPE_CHECKING:
    from loratop.core.runs import RunSummary


def fmt_loss(value: float | None) -> str:
    """Four decimals; ``NaN`` and ``inf`` spelled out; ``–`` when there is none yet."""
    if value is None:
        return "–"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4f}"


def fmt_duration(seconds: float | None) -> str:
    """``42s``, ``3:07``, ``1:02:03``; ``–`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def header_lines(state: RunState, now: float | None = None, width: int | None = None) -> tuple[str, str]:
    """The two header lines: who and where, then progress; ``width`` (columns): the progress
    line drops its least useful words rather than being cut."""
    now = time.time() if now is None else now
    pending = "…" if state.is_live else "–"  # still to come, or never known (it failed while loading)
    model = state.started.get("model", {}).get("name_or_path", "?") if state.started else pending
    device = state.started.get("device", {}) if state.started else {}
    where = device.get("name", device.get("kind", pending)) if device else pending
    if device.get("kind") == "cpu":
        where = "CPU"
    if state.world_size > 1:
        where += f" ×{state.world_size} ranks"
    first = f"{state.run_name} · {model} · {where} · {state.status.upper()}"
    alert = active_spike(state)
    if alert:
        first += f" · {alert}"
    risk = worst_oom(state)
    if risk:
        first += f" · {risk}"
    if state.overfitting is not None:
        first += f" · OVERFITTING{at_step(state.overfitting.get('step'))}"
    if state.starved is not None:
        first += " · GPU STARVED"
    total = f"/{state.max_steps}" if state.max_steps else ""
    rate = state.recent_rate()
    tok_s = f"{rate[1]:,.0f} tok/s now" if rate else "– tok/s"  # the last 20 steps'; compare's is the mean
    busy = gpu_busy_text(state, rate[1] if rate else None)
    head = f"step {state.last_step}{total} · loss {fmt_loss(state.last_loss)} · "
    elapsed, eta = fmt_duration(state.elapsed(now)), fmt_duration(state.eta())
    notes = CPU_BUSY_NOTES if state.cpu_contended else ("",)
    candidates = [
        second
        for note in notes  # the longest note that fits
        for second in (
            f"{head}elapsed {elapsed} · ETA {eta}{note} · {tok_s}{busy}",
            f"{head}{elapsed} · ETA {eta}{note} · {tok_s}{busy}",
            f"{head}ETA {eta}{note} · {tok_s}{busy}",
            f"{head}ETA {eta}{note} · {tok_s}{busy.replace(' busy', '')}",
            f"{head}ETA {eta}{note} · {tok_s}{busy.replace(' busy', '').split(' · MFU')[0]}",
            f"{head}ETA {eta}{note} · {tok_s}",  # no room for the GPU's figure (the line above names a CPU)
        )
    ]
    second = next((c for c in candidates if width is None or len(c) <= width), candidates[-1])
    return first, second


CPU_BUSY_NOTES = (" (CPU busy with other work: ETA may stretch)", " (CPU busy with other work)", " (CPU busy)")
"""After the ETA while other work takes CPU time from the trainer (:mod:`core.cpu_busy`), the longest that fits."""


def gpu_busy_text(state: RunState, tokens_per_s: float | None) -> str:
    """`` · GPU 16% busy · MFU 1.2%`` after tokens/s: NVML's busy % over the last 30 s and the
    model-FLOPs utilisation (``MFU ?``: the GPU's peak is not in the table); `` · GPU n/a``
    on a CPU run; nothing before the first sample."""
    if state.device_kind == "cpu":
        return " · GPU n/a (CPU)"
    busy = state.recent_busy()
    if busy is None:
        return ""
    return f" · GPU {busy_mfu_text(busy, state.mfu(tokens_per_s), ' busy')}"


def busy_mfu_text(busy: float, mfu: float | None, after_busy: str = "") -> str:
    """``16% · MFU 1.2%`` (``MFU ?`` where the GPU's peak is not in the table)."""
    return f"{fmt_pct(busy)}{after_busy} · MFU {fmt_pct(100 * mfu) if mfu is not None else '?'}"


def eval_text(state: RunState) -> str | None:
    """The header's third line: ``eval 2.3101 (best 2.2800 @400)``, ``eval 2.2800 (best)``;
    ``None`` before the first evaluation (the header then keeps two lines)."""
    last, best = state.last_eval, state.best_eval
    if last is None:
        return None
    loss = last.get("eval_loss")
    text = f"eval {fmt_loss(loss if isinstance(loss, (int, float)) else None)}"
    if best is last:
        return text + " (best)"
    if best is not None:
        text += f" (best {fmt_loss(best.get('eval_loss'))}{at_step(best.get('step'))})"
    return text


ACTIVE_SPIKE_STEPS = 20
"""A spike stays in the header for this many steps after it fired."""


def active_spike(state: RunState) -> str | None:
    """``SPIKE SEVERE @67`` while the latest spike is recent; a fatal one stays."""
    if not state.spikes:
        return None
    last = state.spikes[-1]
    severity = str(last.get("severity", "?"))
    if severity != "fatal" and state.last_step - int(last.get("step") or 0) > ACTIVE_SPIKE_STEPS:
        return None
    return f"SPIKE {severity.upper()}{at_step(last.get('step'))}"


def lr_text(state: RunState) -> str:
    """The latest step's learning rate (``lr 2.00e-04``), beside the schedule's sparkline."""
    lr = state.lr[-1] if state.steps else math.nan
    return f"lr {lr:.2e}" if math.isfinite(lr) else "lr –"


def grad_norm_text(state: RunState) -> str:
    """The latest step's grad norm (``grad norm 0.6289``, ``NaN``), beside its own sparkline."""
    return f"grad norm {fmt_loss(state.grad_norm[-1]) if state.steps else '–'}"


SPARK_STEPS = 200
"""The lr and grad-norm sparklines show this many latest steps."""


def spark_history(series: Sequence[float], steps: int = SPARK_STEPS) -> list[float]:
    """A sparkline's data: the finite values among the last ``steps`` (a NaN grad norm, a
    skipped fp16 step's, would flatten the rest; the text beside it says NaN)."""
    return [value for value in series[-steps:] if math.isfinite(value)]


def params_text(state: RunState) -> str:
    """The frozen-base audit: fraction, counts, groups, verdict."""
    if not state.started:
        return "trainable params: waiting for the model" if state.is_live else "trainable params – (never loaded)"
    params = state.started.get("params", {})
    fraction = params.get("fraction", 0.0)
    groups = params.get("groups", {})
    group_s = "  ".join(f"{name} {g['tensors']}" for name, g in groups.items())
    unexpected = ", ".join(params.get("unexpected", [])[:2])
    frozen = "base frozen ✓" if params.get("base_frozen") else f"BASE NOT FROZEN: {unexpected}"
    lora_b = "" if params.get("lora_b_zero", True) else "  lora_B not zero at start!"
    return (
        f"trainable {100 * fraction:.3f}%  {params.get('trainable', 0):,} / {params.get('total', 0):,}\n"
        f"{group_s}  {frozen}{lora_b}"
    )


def events_text(state: RunState) -> str:
    """Spikes and spills, with honest labels where nothing is measured."""
    if state.spikes:
        recent = ", ".join(f"{s.get('step')} ({s.get('severity', '?')})" for s in reversed(state.spikes[-3:]))
        more = ", …" if len(state.spikes) > 3 else ""
        spikes = f"spikes {len(state.spikes)}: step {recent}{more}"
    else:
        spikes = "spikes: none" if state.steps else "spikes –"
    method = state.paged.get("spill_method") if state.paged else None
    worst_spills = _worst_rank_spills(state)
    if worst_spills is not None:
        spills = worst_spills
    elif state.spills:
        total = sum(int(s.get("bytes") or 0) for s in state.spills)
        methods = sorted({str(s.get("method")) for s in state.spills})
        spills = f"spills {len(state.spills)}  {fmt_bytes(total)} ({'/'.join(methods)})"
    elif state.device_kind == "cpu":
        spills = "spills n/a (CPU run)"
    elif method == "n/a":
        spills = "spills n/a (nothing paged)"
    elif method in ("exact", "estimated"):
        spills = f"spills: none seen ({method})"
    elif state.started is None:
        spills = "spills –"
    else:
        spills = "spills: counted from the first step"
    return f"{spikes}\n{spills}\n{oom_text(state)}\n{paged_text(state)}"


def _rank_name(row: Any) -> str:
    return rank_label(row.get("node"), row.get("local_rank"))


def _worst_rank_spills(state: RunState) -> str | None:
    """With several ranks: the most spills on any rank, and which (``None``: one rank, or nothing paged)."""
    rows: list[Any] = [r for r in state.rank_rows if isinstance(r.get("spills"), int)]
    if not rows:
        return None
    worst = max(rows, key=lambda r: r["spills"])
    total = sum(r["spills"] for r in rows)
    if not total:
        return f"spills: none seen on {len(rows)} ranks"
    return f"spills {total} on {len(rows)} ranks; most on rank {_rank_name(worst)}: {worst['spills']}"


def worst_oom(state: RunState) -> str | None:
    """``OOM DANGER`` (``OOM WATCH``) for the header while the forecast says so; with several
    ranks, the worst rank's level and which rank (``OOM DANGER 1:0``)."""
    worst = state.worst_oom_rank()
    if worst is not None:
        level, where = str(worst.get("oom_level")), f" {_rank_name(worst)}"
    else:
        level, where = str(state.oom_risk.get("level")) if state.oom_risk else "", ""
    if level not in ("watch", "danger") or not state.is_live:
        return None
    return f"OOM {level.upper()}{where}"


def oom_text(state: RunState) -> str:
    """The OOM-risk level and why; with several ranks, the worst rank's level."""
    worst = state.worst_oom_rank()
    if worst is not None:
        rated = sum(1 for r in state.rank_rows if r.get("oom_level") in OOM_LEVELS)
        return f"OOM risk {str(worst.get('oom_level')).upper()} (worst of {rated} ranks: {_rank_name(worst)})"
    risk = state.oom_risk
    if risk is None:
        return "OOM risk –" if state.device_kind != "cuda" else "OOM risk: forecast after 3 steps"
    level = str(risk.get("level"))
    if level == "n/a":
        return "OOM risk n/a (CPU run)" if state.device_kind == "cpu" else f"OOM risk n/a: {risk.get('reason', '')}"
    peak, available = risk.get("predicted_peak"), risk.get("available")
    return f"OOM risk {level.upper()}: peak {fmt_bytes(peak)} of {fmt_bytes(available)}"


def paged_text(state: RunState) -> str:
    """Paged optimizer state: how much, and how much is kept as ordinary memory."""
    paged = state.paged
    if paged is None:
        return "paged: – (accounted at the first step)"
    if not paged.get("available"):
        return f"paged: unknown ({paged.get('note', '')})"
    if not paged.get("paged_bytes"):
        if state.device_kind == "cpu":
            return "paged: nothing (CPU run)"
        return f"paged: nothing (no state ≥ 1e5 elements); {fmt_bytes(paged.get('unpaged_bytes'))} on GPU"
    return (
        f"paged: {fmt_bytes(paged.get('paged_bytes'))} in {paged.get('paged_tensors')} tensors; "
        f"{fmt_bytes(paged.get('unpaged_bytes'))} kept on GPU"
    )


def outcome_text(state: RunState) -> str | None:
    """How the run ended, with the error's last lines; ``None`` while it runs."""
    if state.finished is None:
        if state.folder_note is not None:
            return state.folder_note
        if state.status == LOST:
            return lost_text(state)
        if state.status == UNKNOWN:
            return f"not known to be running: {state.not_proven}"
        if state.paused is not None:
            return state.paused
        starved = state.starved
        if starved is not None:
            return f"GPU starved at step {starved.get('step')}: {starved.get('message')}"
        return None
    status = state.finished.get("status")
    duration = fmt_duration(state.finished.get("duration_s"))
    lost = state.rank_lost
    if lost is not None:  # the root cause, before whatever rank 0 saw of it
        error = state.finished.get("error") or {}
        lines = [f"failed after {duration}: {lost.get('message')}", "torchrun ended the other ranks"]
        if error.get("message") and error.get("message") != lost.get("message"):
            lines.append(f"rank 0 saw: {error['message']}")
        return "\n".join(lines)
    adapter = next((c.get("path") for c in reversed(state.checkpoints) if c.get("final")), None)
    if status in (ev.COMPLETED, ev.STOPPED):
        line = f"{status} after {duration} at step {state.last_step}"
        if status == ev.STOPPED and state.finished.get("stopped_by"):
            line += f" ({state.finished['stopped_by']})"
        line += f" · adapter: {adapter}" if adapter else ""
        if state.finished.get("adapter_step") is not None:
            line += f" (from step {state.finished['adapter_step']}, the best eval)"
        return line
    error = state.finished.get("error") or {}
    if status == ev.DISK_FULL:
        lines = [f"{error.get('message', 'disk full')} (after {duration})"]
        lines.append(f"adapter: {adapter}" if adapter else "no adapter could be saved")
        if state.finished.get("rescued_to"):
            lines.append(f"a copy of the run (events, config, adapter): {state.finished['rescued_to']}")
        return "\n".join(lines)
    lines = [f"{status} after {duration}: {error.get('message', '')}"]
    if status == ev.OOM:
        tokens = error.get("batch_tokens")
        lines.append(f"at step {error.get('step')}, batch of {tokens:,} padded tokens" if tokens else "")
        lines += [f"try: {s}" for s in error.get("suggestions", [])[:3]]
    else:
        lines += error.get("traceback", [])[-4:]
    return "\n".join(line for line in lines if line)


def lost_text(state: RunState) -> str:
    """A run whose trainer is gone without a report: how (as far as known), when, and what is kept."""
    cause = state.lost_cause or NO_REPORT
    when = f"last step {state.last_step}" if cause == NO_REPORT else f"at step {state.last_step}"
    lines = [f"{cause} {when}" if cause != NO_REPORT else f"{cause} ({when})"]
    if "SIGKILL" in cause:
        lines.append(SIGKILL_HINT)
    saved = state.checkpoints[-1] if state.checkpoints else None
    if saved is not None:
        lines.append(f"kept: {saved.get('path')} (step {saved.get('step')}); every event up to then; trainer.log")
    else:
        lines.append("no adapter was saved; kept: every event up to then, trainer.log")
    return "\n".join(lines)


def status_line(state: RunState) -> str:
    """Stream health and the trainer's latest phase message."""
    parts = [f"{state.events_seen} events"]
    if state.garbage:
        parts.append(f"{state.garbage} garbled line(s) skipped")
    if state.filled_from_file:
        parts.append(f"{state.filled_from_file} filled from events.jsonl")
    last = state.messages[-1] if state.messages else None
    # Loading phases; later only what needs attention, until it is dealt with.
    if last and (state.started is None or last.startswith(("warning", "error", "SIG"))) and not _checkpoint_done(state):
        parts.append(last)
    return " · ".join(parts)


def at_step(step: object) -> str:
    """`` @N`` for a step that is known, nothing otherwise (never ``@None`` on screen)."""
    return f" @{step}" if isinstance(step, int) and not isinstance(step, bool) else ""


def _checkpoint_done(state: RunState) -> bool:
    """The latest message announced a checkpoint (``SIGUSR1: saving a checkpoint after step 92``)
    and a checkpoint was saved after it: the message has nothing more to say."""
    if "saving a checkpoint" not in state.messages[-1] or not state.checkpoints:
        return False
    saved, said = state.checkpoints[-1].get("seq"), state.message_seq
    return isinstance(saved, int) and isinstance(said, int) and saved > said


# -- run history (loratop ls, the home screen, compare) ----------------------------------------

HISTORY_COLUMNS = (
    "run", "status", "knobs", "step", "final loss", "eval (best)", "peak VRAM", "GPU busy", "spikes", "spills", "time",
    "parent",
)  # fmt: skip
"""The run history's columns, as the home screen titles them (``loratop ls`` in capitals)."""


def steps_label(step: int, max_steps: int | None) -> str:
    """``120/300``, or just the step when the run's length is unknown."""
    return f"{step}/{max_steps}" if max_steps else str(step)


def peak_vram_label(peak: int | None, device: str | None) -> str:
    """Peak VRAM; ``n/a (CPU)`` for a CPU run; ``–`` when nothing was measured."""
    if peak is not None:
        return fmt_bytes(peak)
    return "n/a (CPU)" if device == "cpu" else "–"


def busy_label(busy: float | None, mfu_value: float | None, device: str | None, cpu_text: str = "n/a (CPU)") -> str:
    """``16% · MFU 1.2%``: the GPU's mean busy % while training and the model-FLOPs
    utilisation (``MFU ?`` where the GPU's peak is unknown); ``n/a (CPU)`` on a CPU run."""
    if device == "cpu":
        return cpu_text
    if busy is None:
        return "–"
    return busy_mfu_text(busy, mfu_value)


def count_label(count: int | None) -> str:
    """A count, or ``–`` when nothing was counted (never a made-up 0)."""
    return "–" if count is None else str(count)


def spills_label(spills: int | None, device: str | None, cpu_text: str = "n/a (CPU)") -> str:
    """The spill count; on a CPU nothing is paged, so "0" would claim a measurement that never
    ran; ``–`` for a run that never started."""
    if device == "cpu" and not spills:
        return cpu_text
    return count_label(spills)


def eval_label(run: RunSummary) -> str:
    """``2.3101 (2.2800)``: the last eval loss and the best; ``overfit@600`` when an alert
    said so; ``–`` for a run without eval data."""
    if run.eval_loss is None and run.best_eval_loss is None:
        return "–"
    text = fmt_loss(run.eval_loss)
    if run.best_eval_loss is not None and run.best_eval_loss != run.eval_loss:
        text += f" ({fmt_loss(run.best_eval_loss)})"
    if run.overfitting_step is not None:
        text += f" overfit@{run.overfitting_step}"
    return text


def history_row(run: RunSummary, spills_cpu_text: str = "n/a (CPU)") -> tuple[str, ...]:
    """One run's cells under :data:`HISTORY_COLUMNS`."""
    from loratop.core.runs import knob_label, parent_label

    return (
        run.name,
        f"{run.status} (damaged)" if run.damaged else run.status,
        knob_label(run.config),
        steps_label(run.step, run.max_steps),
        fmt_loss(run.last_loss),
        eval_label(run),
        peak_vram_label(run.peak_vram, run.device),
        busy_label(run.gpu_busy, run.mfu, run.device, spills_cpu_text),
        count_label(run.spikes),
        spills_label(run.spills, run.device, spills_cpu_text),
        fmt_duration(run.duration),
        parent_label(run.run_dir, run.parent),
    )
