"""Measure issue 25's speed knobs on a real GPU: today's settings, each knob alone, the candidate defaults.

    python scripts/gpu_speed.py [--steps 20] [--layers 22] [--workloads gpu_check,8b] [--arms ARM,...]
                                [--candidate KEY=VALUE,...] [--once] [--budget-s 400] [--out DIR]

Two workloads on the same local model (``scripts/gpu_check.py``'s random-init ~1B Llama, built
here, no download): ``gpu_check``, the GPU check's own throughput run (LoRA r=64, batch 8 × up
to 512 tokens), and ``8b``, the knobs of ``sample_configs/llama-3.1-8b-qlora.yaml`` (r 16,
batch 4 × 4 accumulation steps, up to 2048 tokens) with the embedded data.

Every run is its own trainer process, started as ``loratop run`` starts it
(:func:`preflight.launcher.launch`): PyTorch keeps the attention plans it made for each batch shape
(cuDNN's graphs) for the life of a process, so a second run in one process would time that
cache, not the run a user starts. Each run of a workload trains once over the same rows
(``--steps`` × today's rows per step), so every arm sees the same tokens. From the run's own
``events.jsonl`` (what the dashboard reads):

- **tokens/s**: the tokens the Trainer counts over the steps' own times, after
  :data:`gpu_check.WARMUP_STEPS` warm-up steps;
- **GPU busy %**: NVML's utilisation in the memory samples over the same steps;
- **final loss**: the last step's loss; **loss/token**: the mean training loss over the run's
  tokens (each step's loss weighted by its tokens): comparable across arms, over the same rows.

The arms run interleaved (today and the candidate first, today again midway, the candidate at the
end), so drift in clocks hits all alike; a repeated arm shows its median. The candidate defaults
are the knobs that keep each step's math (``--candidate`` changes them). Goal on the H200 (issue
25): the candidate ≥ 3× today's tokens/s (≥ 4,600 on the ``gpu_check`` workload) and GPU busy
≥ 50 %, at equal loss per token.

Budget, for ~7 minutes on the H200: ~30 s to build the model; then 13 runs (``gpu_check``: today
×2, candidate ×2, seven single knobs; ``8b``: today, candidate), each ~15 s to start (imports,
CUDA, the 4-bit load) and 20 steps (today's ~0.6 s a step on the ``gpu_check`` workload, 5 of
them warm-up): ~27 s a run. ``--budget-s`` (400) bounds the runs: one that would end past it is
skipped, and says so.

Without a GPU it runs the same on the embedded tiny model, a few steps each, and says plainly
that CPU figures are not a measurement (the ``sdpa_backend`` kernels a CPU lacks are skipped).
Exit code 1 only if a run failed; a missed goal is a finding, not a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO, REPO / "scripts"):  # loratop, and gpu_check beside this script
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import gpu_check  # noqa: E402  # its model, its workload, its token rate

from loratop.core import events as ev  # noqa: E402
from loratop.core.gpu_busy import busy_pct, fmt_pct  # noqa: E402
from loratop.preflight.config import RunConfig, dump_config, load_config, parse_overrides, sdpa_cpu_problem  # noqa: E402

TODAY = "today"
CANDIDATE = "candidate"
CANDIDATE_SETS = ("training.pad_to_multiple_of=64", "training.sdpa_backend=flash", "training.dataloader_num_workers=2")
"""The candidate defaults: the knobs that keep each step's math (group_by_length and packing
change which rows share a step, and move each step's loss: a spike detector's false alarm)."""
ARMS: dict[str, tuple[str, ...]] = {
    TODAY: (),
    "pad_to_multiple_of=64": ("training.pad_to_multiple_of=64",),
    "group_by_length": ("training.group_by_length=true",),
    "packing": ("training.packing=true",),
    "padding_free": ("training.padding_free=true",),
    "sdpa_backend=flash": ("training.sdpa_backend=flash",),
    "sdpa_backend=efficient": ("training.sdpa_backend=efficient",),
    "dataloader_num_workers=2": ("training.dataloader_num_workers=2",),
    CANDIDATE: CANDIDATE_SETS,
}
"""Each arm's ``--set`` assignments on top of the workload (``dataloader_pin_memory`` is already
on in today's GPU runs: transformers' default)."""
WORKLOADS = ("gpu_check", "8b")
EIGHT_B = REPO / "sample_configs" / "llama-3.1-8b-qlora.yaml"
GOAL_RATIO = 3.0
GOAL_TOKENS_PER_S = 4600.0
"""On the ``gpu_check`` workload (3× the 1,530 tokens/s measured on the H200 before the knobs)."""
GOAL_BUSY_PCT = 50.0
LOSS_TOLERANCE = 0.03
"""Nats per token: "equal loss per token". The same rows in another order or batching move a short
run's loss per token by less than its seed-to-seed spread (up to 0.026 on the tiny model's demo
rows, seeds 42-44; tests/test_speed_knobs.py)."""


@dataclass
class ArmRun:
    """One timed run of one arm."""

    workload: str
    arm: str
    tokens_per_s: float | None = None
    busy_pct: float | None = None
    """Mean NVML utilisation over the timed steps; ``None`` on CPU."""
    final_loss: float | None = None
    loss_per_token: float | None = None
    steps: int = 0
    seconds: float = 0.0
    error: str | None = None


# -- what a run's events say -----------------------------------------------------------------


def loss_per_token(losses: list[float], tokens: list[int]) -> float | None:
    """The mean loss over a run's tokens: each step's loss is the mean over its own tokens, so
    weight it by them (the tokens it counts; the loss's targets are those less one per row)."""
    pairs = [(loss, n) for loss, n in zip(losses, tokens, strict=False) if n > 0]
    total = sum(n for _, n in pairs)
    return sum(loss * n for loss, n in pairs) / total if total else None


def timed_busy(events: list[dict[str, Any]], warmup: int = gpu_check.WARMUP_STEPS) -> float | None:
    """Mean GPU busy % of the memory samples between the end of step ``warmup`` and the last step."""
    steps = [e for e in events if e.get("type") == ev.STEP]
    if not steps:
        return None
    start = next((e["seq"] for e in steps if e.get("step") == warmup), steps[0]["seq"])
    end = steps[-1]["seq"]
    samples = [busy_pct(e.get("gpus")) for e in events if e.get("type") == ev.MEMORY and start < e["seq"] < end]
    values = [v for v in samples if v is not None]
    return statistics.fmean(values) if values else None


def measured(events: list[dict[str, Any]], result: ArmRun) -> ArmRun:
    """Fill ``result`` in from a finished run's events."""
    steps = [e for e in events if e.get("type") == ev.STEP]
    marks: list[tuple[float, int]] = []
    elapsed, seen, tokens, losses = 0.0, 0, [], []
    for step in steps:
        elapsed += float(step.get("step_time_s") or 0.0)  # the step's own time: data loading and all
        total = int(step.get("tokens") or 0)
        marks.append((elapsed, total))
        tokens.append(total - seen)
        seen = total
        losses.append(float(step["loss"]) if step.get("loss") is not None else float("nan"))
    result.steps = len(steps)
    result.tokens_per_s = gpu_check.tokens_per_s(marks) if len(marks) > 1 else None
    result.busy_pct = timed_busy(events)
    result.final_loss = losses[-1] if losses else None
    result.loss_per_token = loss_per_token(losses, tokens)
    return result


# -- one run -----------------------------------------------------------------------------------


def workload_config(workload: str, model: Path | None, run_dir: Path, steps: int) -> RunConfig:
    """The workload's config before any arm: ``gpu_check``'s own, or the 8B sample's knobs on the
    local model with the embedded data (its hub dataset needs the network)."""
    if workload == "gpu_check":
        return gpu_check._config(model, run_dir, steps)
    sets = [
        f"output_dir={run_dir}",
        f"model.name_or_path={model or 'tiny'}",
        "data.path=embedded:tool-chat",
        "data.format=messages",
        "data.split=train",
        "data.eval_split=null",
        "training.save_steps=0",
    ]
    return load_config(EIGHT_B, parse_overrides(sets), check_files=False)


def arm_config(
    base: RunConfig, arm_sets: tuple[str, ...], steps: int, mean_row_tokens: float, folder: Path
) -> RunConfig:
    """``base`` with the arm's knobs, training once over today's ``steps`` × rows-per-step rows.

    Packing fills sequences of ``max_seq_length`` tokens, so its batch counts packed sequences:
    it is scaled down to hold about today's tokens per step (the same optimisation, not a larger
    batch by the back door)."""
    t = base.training
    rows = rows_for(base, steps)
    sets = ["training.max_steps=-1", "training.num_train_epochs=1", f"data.max_rows={rows}", *arm_sets]
    if "training.packing=true" in arm_sets:
        packed = round(t.per_device_train_batch_size * mean_row_tokens / t.max_seq_length)
        sets.append(f"training.per_device_train_batch_size={max(1, packed)}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "base.yaml"
    path.write_text(dump_config(base))
    return load_config(path, parse_overrides(sets), check_files=False)


def rows_for(config: RunConfig, steps: int) -> int:
    """The rows today's settings train on in ``steps`` steps."""
    return steps * config.training.per_device_train_batch_size * config.training.gradient_accumulation_steps


def mean_row_tokens(model: Path | None, rows: int) -> float:
    """Mean tokens of the first ``rows`` rows of the embedded data, with the model's tokenizer."""
    from transformers import AutoTokenizer

    from loratop.preflight.data_files import EMBEDDED_DATASETS, load_rows
    from loratop.trainer.tiny_model import tiny_model_dir

    tokenizer = AutoTokenizer.from_pretrained(model or tiny_model_dir()[0])
    lengths = []
    for row in load_rows(EMBEDDED_DATASETS["tool-chat"])[:rows]:
        text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return statistics.fmean(lengths)


def timed_arm(config: RunConfig, workload: str, arm: str, timeout_s: float) -> ArmRun:
    """Run ``config`` as ``loratop run`` does (a trainer process of its own) and read its events."""
    from loratop.preflight.launcher import launch

    started = time.perf_counter()
    launched = launch(config)
    os.close(launched.events_fd)  # events.jsonl holds every event; the trainer goes on without a reader
    try:
        code = launched.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        code = _stop(launched.process)
    result = ArmRun(workload, arm, seconds=time.perf_counter() - started)
    events, _ = ev.read_events(str(launched.run_dir / "events.jsonl"))
    finished = next((e for e in events if e.get("type") == ev.RUN_FINISHED), {})
    if code != 0 or finished.get("status") != ev.COMPLETED:
        why = (finished.get("error") or {}).get("message") or finished.get("stopped_by") or f"exit code {code}"
        result.error = f"{why} (see {launched.run_dir / 'trainer.log'})"
        return result
    return measured(events, result)


def _stop(process: subprocess.Popen[bytes]) -> int:
    """A run past its time: SIGTERM (it stops at the next step, adapter saved), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)  # its own session: the trainer and its data-loader workers
        try:
            return process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    return -1


# -- the plan, the table ---------------------------------------------------------------------


def schedule(arms: list[str], once: bool = False) -> list[str]:
    """Today and the candidate first, today again midway, the candidate again at the end (each
    arm just once with ``once``)."""
    others = [a for a in arms if a not in (TODAY, CANDIDATE)]
    if once:
        return [TODAY, CANDIDATE, *others]
    half = (len(others) + 1) // 2
    return [TODAY, CANDIDATE, *others[:half], TODAY, *others[half:], CANDIDATE]


@dataclass
class Row:
    """One line of the table: an arm's median over its runs."""

    workload: str
    arm: str
    runs: int
    tokens_per_s: float | None
    ratio: float | None
    busy_pct: float | None
    final_loss: float | None
    loss_per_token: float | None
    error: str | None = None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(runs: list[ArmRun]) -> list[Row]:
    """One row per workload and arm, in the order they first ran; the ratio is to today's median."""
    rows: list[Row] = []
    for workload in dict.fromkeys(r.workload for r in runs):
        mine = [r for r in runs if r.workload == workload]
        today = _median([r.tokens_per_s for r in mine if r.arm == TODAY])
        for arm in dict.fromkeys(r.arm for r in mine):
            of_arm = [r for r in mine if r.arm == arm]
            good = [r for r in of_arm if r.error is None]
            rate = _median([r.tokens_per_s for r in good])
            rows.append(
                Row(
                    workload,
                    arm,
                    len(good),
                    rate,
                    rate / today if rate is not None and today else None,
                    _median([r.busy_pct for r in good]),
                    _median([r.final_loss for r in good]),
                    _median([r.loss_per_token for r in good]),
                    error=None if good else of_arm[0].error,
                )
            )
    return rows


COLUMNS = ("workload", "arm", "runs", "tokens/s", "× today", "GPU busy", "final loss", "loss/token")


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def table(rows: list[Row]) -> str:
    """The results as one fixed-width table (GPU busy ``n/a`` where NVML had no reading: a CPU)."""
    lines = [[*COLUMNS]]
    for r in rows:
        if r.error is not None:
            lines.append([r.workload, r.arm, "0", "failed", "–", "–", "–", r.error[:60]])
            continue
        lines.append(
            [
                r.workload,
                r.arm,
                str(r.runs),
                _num(r.tokens_per_s, ",.0f"),
                _num(r.ratio, ".2f") + ("×" if r.ratio is not None else ""),
                fmt_pct(r.busy_pct, "n/a"),
                _num(r.final_loss, ".4f"),
                _num(r.loss_per_token, ".4f"),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    left = {0, 1}
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


def verdict(rows: list[Row], on_gpu: bool) -> list[str]:
    """The goal of issue 25 on the ``gpu_check`` workload, and which knobs were faster at equal loss."""
    out = []
    by = {(r.workload, r.arm): r for r in rows}
    today, candidate = by.get(("gpu_check", TODAY)), by.get(("gpu_check", CANDIDATE))
    prefix = "" if on_gpu else "CPU rehearsal, not a measurement: "
    if today and candidate and candidate.tokens_per_s and candidate.ratio is not None:
        rate_ok = candidate.ratio >= GOAL_RATIO and candidate.tokens_per_s >= GOAL_TOKENS_PER_S
        busy_ok = candidate.busy_pct is not None and candidate.busy_pct >= GOAL_BUSY_PCT
        delta = (
            candidate.loss_per_token - today.loss_per_token
            if candidate.loss_per_token is not None and today.loss_per_token is not None
            else None
        )
        loss_ok = delta is not None and abs(delta) <= LOSS_TOLERANCE
        if on_gpu:
            out.append(
                f"GOAL tokens/s: {'PASS' if rate_ok else 'FAIL'} — candidate {candidate.tokens_per_s:,.0f} tokens/s"
                f" = {candidate.ratio:.2f}× today (goal ≥ {GOAL_RATIO:g}× and ≥ {GOAL_TOKENS_PER_S:,.0f})"
            )
            out.append(
                f"GOAL GPU busy: {'PASS' if busy_ok else 'FAIL'} — candidate {fmt_pct(candidate.busy_pct, 'n/a')}"
                f" (goal ≥ {GOAL_BUSY_PCT:g}%)"
            )
        else:
            out.append(f"{prefix}candidate {candidate.ratio:.2f}× today's tokens/s; GPU busy n/a")
        change = "n/a" if delta is None else f"{delta:+.4f} nats"
        out.append(
            f"{prefix}GOAL equal loss per token: {'PASS' if loss_ok else 'FAIL'} — candidate vs today {change}"
            f" (within ±{LOSS_TOLERANCE:g})"
        )
    faster = [
        f"{r.arm} {r.ratio:.2f}×"
        for r in rows
        if r.workload == "gpu_check"
        and r.arm not in (TODAY, CANDIDATE)
        and r.ratio is not None
        and r.ratio > 1.0
        and today is not None
        and today.loss_per_token is not None
        and r.loss_per_token is not None
        and abs(r.loss_per_token - today.loss_per_token) <= LOSS_TOLERANCE
    ]
    out.append(f"{prefix}faster than today at equal loss per token: {', '.join(faster) or 'none'}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="today's steps per run (each arm trains on those rows)")
    parser.add_argument("--layers", type=int, default=22, help="decoder layers of the random-init Llama (22: ~1B)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated: {', '.join(WORKLOADS)}")
    parser.add_argument(
        "--arms",
        default=",".join(ARMS),
        help="arms of the gpu_check workload; today and the candidate always run (the 8b workload runs only those)",
    )
    parser.add_argument("--candidate", default=",".join(CANDIDATE_SETS), help="the candidate's KEY=VALUE knobs")
    parser.add_argument("--once", action="store_true", help="each arm once: today and the candidate not repeated")
    parser.add_argument("--budget-s", type=float, default=400.0, help="skip runs that would end past this (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="where runs and the model go (default: a temp folder)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="loratop-gpu-speed-"))
    out.mkdir(parents=True, exist_ok=True)
    workloads = [w for w in args.workloads.split(",") if w]
    arms = [a for a in args.arms.split(",") if a]
    unknown = [w for w in workloads if w not in WORKLOADS] + [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown {', '.join(unknown)}; workloads: {', '.join(WORKLOADS)}; arms: {', '.join(ARMS)}")
    knobs = dict(ARMS, **{CANDIDATE: tuple(s for s in args.candidate.split(",") if s)})

    gpu_check._section("machine")
    cuda = _gpu_here()
    model: Path | None = None
    steps = args.steps
    if cuda:
        import torch

        print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
        gpu_check._section("model")
        model = gpu_check.build_model(out / "model", args.layers)
    else:
        steps = min(steps, 3)
        print(
            f"no NVIDIA GPU: a CPU rehearsal on the embedded tiny model, {steps} steps a run."
            " CPU numbers are not a measurement: they only show that every arm runs and what the table says."
        )
    plan: list[tuple[str, str]] = []
    for workload in workloads:
        chosen = arms if workload == "gpu_check" else [TODAY, CANDIDATE]
        plan += [(workload, arm) for arm in schedule(chosen, once=args.once or workload != "gpu_check")]
    print(f"candidate: {', '.join(knobs[CANDIDATE]) or 'today'}")
    gpu_check._section(
        f"{len(plan)} runs over {', '.join(workloads)}, interleaved, each a trainer process training once over"
        f" today's {steps} steps of rows; budget {args.budget_s:.0f} s"
    )
    started = time.perf_counter()
    runs: list[ArmRun] = []
    row_tokens: dict[str, float] = {}
    for i, (workload, arm) in enumerate(plan):
        head = f"run {i + 1}/{len(plan)} {workload} {arm}"
        problem = None if cuda else next(filter(None, (_cpu_refusal(s) for s in knobs[arm])), None)
        if problem is not None:
            print(f"{head}: skipped on CPU ({problem})", flush=True)
            continue
        left = args.budget_s - (time.perf_counter() - started)
        if runs and statistics.fmean(r.seconds for r in runs) > left:
            print(f"{head}: skipped (it would end past --budget-s)", flush=True)
            continue
        run_dir = out / f"{i:02d}-{workload}-{arm.replace('=', '-')}"
        try:
            base = workload_config(workload, model, run_dir, steps)
            if "training.packing=true" in knobs[arm] and workload not in row_tokens:
                row_tokens[workload] = mean_row_tokens(model, rows_for(base, steps))
            config = arm_config(base, knobs[arm], steps, row_tokens.get(workload, 0.0), out / "configs" / run_dir.name)
            result = timed_arm(config, workload, arm, timeout_s=max(left, 60.0) + 120.0)
        except Exception as exc:
            traceback.print_exc()
            result = ArmRun(workload, arm, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        runs.append(result)
        print(_progress(head, result), flush=True)

    gpu_check._section("results: tokens/s after the warm-up, GPU busy % over the same steps, loss over the same rows")
    rows = summarise(runs)
    print(table(rows))
    for line in verdict(rows, cuda):
        print(line)
    print(f"{len(runs)} runs in {time.perf_counter() - started:.0f} s; runs in {out}")
    return 1 if any(r.error for r in runs) else 0


def _gpu_here() -> bool:
    """Whether NVML sees a GPU and torch can use it (torch is imported only then: a CPU
    rehearsal's own process stays light; each run imports it anyway)."""
    from loratop.core.gpu_devices import NVML_OK, GpuDevices

    gpus = GpuDevices()
    try:
        if gpus.state != NVML_OK or not gpus.devices:
            print(f"NVML: {gpus.state} {gpus.note}".rstrip())
            return False
    finally:
        gpus.close()
    import torch

    return bool(torch.cuda.is_available())


def _cpu_refusal(assignment: str) -> str | None:
    key, _, value = assignment.partition("=")
    return sdpa_cpu_problem(value) if key == "training.sdpa_backend" else None


def _progress(head: str, r: ArmRun) -> str:
    if r.error is not None:
        return f"{head}: FAILED: {r.error}"
    return (
        f"{head}: {_num(r.tokens_per_s, ',.0f')} tokens/s over {r.steps} steps, GPU busy {fmt_pct(r.busy_pct, 'n/a')},"
        f" loss/token {_num(r.loss_per_token, '.4f')}, {r.seconds:.0f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
