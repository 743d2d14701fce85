"""The ``loratop`` command line.

    loratop                      the home screen: runs, open one, start one
    loratop run CONFIG [--set section.key=value ...] [--no-tui]
    loratop check CONFIG [--set section.key=value ...]
    loratop estimate CONFIG [--set section.key=value ...]   will it fit? (reads config.json only)
    loratop demo [--no-tui]
    loratop attach [RUN]         replay a run's events, then follow it live
    loratop ls                   list runs

A mistake in the config ends in one line per problem and exit code 2, before
anything is launched.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from trainer.architectures import model_type_of
from trainer.config import ConfigError, RunConfig, load_config, parse_overrides
from trainer.data_files import DataProblem, inspect_data
from tui import samples
from tui.runs import DEFAULT_ROOT, RunNotFound, find_run, list_runs

EXIT_USAGE = 2


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML run config, or the name of a shipped sample (e.g. tiny-cpu-demo)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set lora.r=32 --set output_dir=runs/r32 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="loratop", description="Launch and watch QLoRA fine-tuning runs.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="validate a config, launch the trainer and watch it")
    _add_config_args(run)
    run.add_argument(
        "--no-tui", action="store_true", help="print a compact line every few steps instead of the dashboard"
    )

    check = commands.add_parser("check", help="validate a config without training")
    _add_config_args(check)

    estimate = commands.add_parser("estimate", help="pre-flight memory estimate from the model's config.json")
    _add_config_args(estimate)

    demo = commands.add_parser("demo", help=f"run the shipped tiny CPU demo ({samples.DEMO}.yaml)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    demo.add_argument("--no-tui", action="store_true", help="print lines instead of the dashboard")

    attach = commands.add_parser("attach", help="replay a run's events, then follow it live")
    attach.add_argument("run", nargs="?", help="a run's name (under --runs-dir) or folder; default: the latest")
    attach.add_argument("--runs-dir", type=Path, default=DEFAULT_ROOT, help="where runs live (default: runs/)")

    ls = commands.add_parser("ls", help="list runs: running ones first, then newest first")
    ls.add_argument("--runs-dir", type=Path, default=DEFAULT_ROOT, help="where runs live (default: runs/)")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_ROOT, help="where runs live (default: runs/)")
    return parser


def _load(config_arg: str, overrides: list[str]) -> tuple[RunConfig, Path]:
    path = samples.resolve_config_path(config_arg)
    return load_config(path, parse_overrides(overrides)), path


def _report(exc: ConfigError) -> int:
    for line in exc.problems:
        print(line, file=sys.stderr)
    count = len(exc.problems)
    print(f"loratop: {count} problem{'s' if count != 1 else ''} in the config; nothing was launched", file=sys.stderr)
    return EXIT_USAGE


def cmd_check(args: argparse.Namespace) -> int:
    """Validate and summarise a config."""
    try:
        config, path = _load(args.config, args.overrides)
    except ConfigError as exc:
        return _report(exc)
    print(summarise(config, path))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    """Print the pre-flight memory estimate: full fine-tune, LoRA, QLoRA against the GPU."""
    from trainer.estimate import EstimateError, estimate, format_estimate, load_model_shape, visible_gpu_total

    try:
        # The data file and output folder do not matter to an estimate; bad knobs do.
        path = samples.resolve_config_path(args.config)
        config = load_config(path, parse_overrides(args.overrides), check_files=False)
    except ConfigError as exc:
        return _report(exc)
    try:
        shape = load_model_shape(config.model.name_or_path)
    except EstimateError as exc:
        print(f"loratop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    gpu_total, gpu_name = visible_gpu_total()
    print(format_estimate(estimate(shape, config, gpu_total, gpu_name)))
    return 0


def preflight_line(config: RunConfig) -> str:
    """One line of the pre-flight estimate for the configured method (never fails a launch)."""
    from trainer.estimate import EstimateError, estimate, fit_label, fmt_size, load_model_shape, visible_gpu_total

    try:
        shape = load_model_shape(config.model.name_or_path)
    except EstimateError as exc:
        return f"pre-flight estimate: n/a ({exc})"
    gpu_total, gpu_name = visible_gpu_total()
    est = estimate(shape, config, gpu_total, gpu_name)
    row = est.row(est.selected)
    return (
        f"pre-flight estimate ({row.name}): {fmt_size(row.total)} peak; {fit_label(row, gpu_name)} (loratop estimate)"
    )


def summarise(config: RunConfig, path: Path) -> str:
    """A few lines saying what the config will do."""
    q = config.quantization
    lora = config.lora
    t = config.training
    try:
        info = inspect_data(config.data.path, config.data.format)
        rows = f"{info.rows:,} rows" if info.rows is not None else "hub dataset, fetched at run time"
        data = f"{config.data.path} ({rows}, {info.format or config.data.format})"
    except DataProblem as exc:  # pragma: no cover - load_config already checked
        data = f"{config.data.path} ({exc})"
    if q.load_in_4bit:
        base = q.bnb_4bit_quant_type.upper() + (", double quant" if q.bnb_4bit_use_double_quant else "")
    else:
        base = "unquantized"
    steps = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.num_train_epochs:g} epoch(s)"
    scale = lora.lora_alpha / lora.r
    batch = f"{t.per_device_train_batch_size}×{t.gradient_accumulation_steps}"
    return "\n".join(
        [
            f"ok: {path}",
            f"  model   {config.model.name_or_path} ({base}, compute {q.bnb_4bit_compute_dtype})",
            f"  lora    r={lora.r} lora_alpha={lora.lora_alpha:g} (scale {scale:g}) dropout={lora.lora_dropout:g}"
            f" on {', '.join(lora.target_modules)}",
            f"  train   lr={t.learning_rate:g} {t.lr_scheduler_type}, {steps}, batch {batch},"
            f" seq {t.max_seq_length}, {t.optim}",
            f"  data    {data}",
            f"  output  {config.output_dir}",
            *_unchecked_notes(config),
        ]
    )


def _unchecked_notes(config: RunConfig) -> list[str]:
    """Say what a check could not verify here, rather than implying it did."""
    if model_type_of(config.model.name_or_path) is None:
        return [
            f"  note    target modules not checked: no config.json for {config.model.name_or_path} here "
            "(not downloaded yet); peft checks them when the model loads"
        ]
    return []


def cmd_run(args: argparse.Namespace, config_arg: str | None = None) -> int:
    """Validate, launch and follow a run."""
    try:
        config, path = _load(config_arg or args.config, args.overrides)
    except ConfigError as exc:
        return _report(exc)
    from tui.launcher import launch

    preflight = preflight_line(config)
    if args.no_tui:
        print(preflight)
    run = launch(config, path)
    if args.no_tui:
        from tui.headless import follow_launched

        return follow_launched(run)
    return _dashboard(run.run_dir, run.events_fd, notice=preflight)


def _dashboard(
    run_dir: Path | None, pipe_fd: int | None = None, runs_root: Path = DEFAULT_ROOT, notice: str | None = None
) -> int:
    """Run the Textual app; say how to come back when the user detached."""
    from tui.app import DETACHED, LoratopApp

    outcome = LoratopApp(run_dir, pipe_fd, runs_root, notice=notice).run()
    if outcome == DETACHED and run_dir is not None:
        print(f"detached; the run goes on. Come back with: loratop attach {run_dir}")
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    """Open the monitor of an existing run (replay, then follow)."""
    try:
        run_dir = find_run(args.run, args.runs_dir)
    except RunNotFound as exc:
        print(f"loratop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return _dashboard(run_dir)


def cmd_ls(args: argparse.Namespace) -> int:
    """Print the runs table."""
    from tui.panels import fmt_bytes, fmt_loss

    runs = list_runs(args.runs_dir)
    if not runs:
        print(f"no runs under {args.runs_dir}/ (start one with: loratop demo)")
        return 0
    rows = [("RUN", "STATUS", "STEP", "LAST LOSS", "PEAK VRAM", "SPIKES", "SPILLS", "STARTED")]
    for run in runs:
        vram = fmt_bytes(run.peak_vram) if run.peak_vram is not None else ("n/a (CPU)" if run.device == "cpu" else "–")
        started = time.strftime("%m-%d %H:%M", time.localtime(run.started_at)) if run.started_at else "–"
        step = f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)
        rows.append(
            (run.name, run.status, step, fmt_loss(run.last_loss), vram, str(run.spikes), str(run.spills), started)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``loratop`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        return cmd_check(args)
    if args.command == "estimate":
        return cmd_estimate(args)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "demo":
        return cmd_run(args, config_arg=samples.DEMO)
    if args.command == "attach":
        return cmd_attach(args)
    if args.command == "ls":
        return cmd_ls(args)
    return _dashboard(None, runs_root=args.runs_dir)


if __name__ == "__main__":
    sys.exit(main())
