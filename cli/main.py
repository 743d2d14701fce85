"""The ``loratop`` command line.

    loratop                      the home screen: runs, open one, start one
    loratop run CONFIG [--set section.key=value ...] [--no-tui]
    loratop check CONFIG [--set section.key=value ...]
    loratop estimate CONFIG [--set section.key=value ...]   will it fit? (reads config.json only)
    loratop fit CONFIG [--budget 90s] [--headroom 10%] [--write OUT.yaml]
                                 on a GPU: the largest batch that fits and runs fastest, measured
    loratop demo [--no-tui]
    loratop attach [RUN]         replay a run's events, then follow it live
    loratop ls [--sort KEY] [--index]  run history: knobs, outcome, parent of each run
    loratop compare [RUN ...] [--x steps|tokens] [--no-tui]
                                 what changed between runs and what came of it
    loratop export [RUN] [-o DIR]  write RUN-metrics.csv and RUN-events.jsonl
    loratop edit CONFIG|RUN      the knob editor: change knobs, save and/or launch
    loratop next [RUN] [--write OUT.yaml] [--edit]
                                 the next run: changes proposed from what a finished run recorded
    loratop serve [--port N] [--host H]
                                 the same app in a browser, over an SSH tunnel (a secret link)

A mistake in the config ends in one line per problem and exit code 2, before
anything is launched.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratop.core.run_dir import CONFIG, RunDirError
from loratop.core.runs import DEFAULT_ROOT, SORT_KEYS, AmbiguousRun, RunNotFound, find_run, list_runs
from loratop.core.value_format import format_value
from loratop.preflight import samples
from loratop.preflight.advisor import advise, gather_facts
from loratop.preflight.architectures import model_type_of
from loratop.preflight.config import (
    ConfigError,
    RunConfig,
    box_problems,
    field_value,
    load_config,
    parse_overrides,
    read_yaml,
    unavailable_data,
)
from loratop.preflight.data_files import DataProblem, held_out_rows, inspect_data
from loratop.preflight.launch_checks import disk_space_warning, launch_warnings, preflight_line
from loratop.tui.models.export import EXPORT_DIR

if TYPE_CHECKING:
    from loratop.tui.app import LoratopApp

EXIT_USAGE = 2

RUN_HELP = "a run's name under --runs-dir, a unique prefix or suffix of it (its time stamp), or its folder"


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


class _Version(argparse.Action):
    """``--version``, with the version looked up only when asked (it costs every start ~40 ms)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from loratop.core.version import loratop_version

        print(f"loratop {loratop_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="loratop", description="Launch and watch QLoRA fine-tuning runs.")
    parser.add_argument("--version", action=_Version, nargs=0, help="say which loratop this is, and exit")
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
    estimate.add_argument(
        "--gpus",
        type=int,
        default=None,
        metavar="N",
        help="also per GPU on N GPUs, DDP and FSDP (default: the config's distributed world size)",
    )

    fit = commands.add_parser("fit", help="on a GPU: measure the largest batch that fits and runs fastest")
    _add_config_args(fit)
    fit.add_argument("--budget", default="90s", help="time for the probe's steps, e.g. 90s or 2m (default: 90s)")
    fit.add_argument("--headroom", default="10%", help="share of GPU memory to keep free (default: 10%%)")
    fit.add_argument("--write", type=Path, metavar="OUT.yaml", help="write the recommended knobs as a new config")

    demo = commands.add_parser("demo", help=f"run the shipped tiny CPU demo ({samples.DEMO}.yaml)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    demo.add_argument("--no-tui", action="store_true", help="print lines instead of the dashboard")

    edit = commands.add_parser("edit", help="the knob editor on a config or a run (rerun with changes)")
    edit.add_argument("target", help="a YAML config, a sample's name (tiny-cpu-demo), or a run's name or folder")
    edit.add_argument("--runs-dir", type=Path, default=argparse.SUPPRESS, help="where runs live (default: runs/)")

    attach = commands.add_parser("attach", help="replay a run's events, then follow it live")
    attach.add_argument("run", nargs="?", help=f"{RUN_HELP}; default: the latest")
    attach.add_argument("--runs-dir", type=Path, default=argparse.SUPPRESS, help="where runs live (default: runs/)")

    ls = commands.add_parser("ls", help="list runs with their knobs, outcome and parent")
    ls.add_argument("--runs-dir", type=Path, default=argparse.SUPPRESS, help="where runs live (default: runs/)")
    ls.add_argument(
        "--sort",
        choices=SORT_KEYS,
        default="started",
        help="order: started (running first, then newest; default), name, status, loss and eval (lowest first), "
        "vram, duration, spikes (highest first)",
    )
    ls.add_argument(
        "--index",
        action="store_true",
        help="first write the caches (compact index, summary) of finished runs that lack them, as a run's end "
        "does: for runs from an older loratop, which ls otherwise reads whole every time (ls never writes)",
    )

    compare = commands.add_parser("compare", help="compare runs: config diff, outcomes, loss curves")
    compare.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help=f"runs to compare, the first is the base: {RUN_HELP}; one run: it and its parent (or the run "
        "started before it); none: the latest run and its parent",
    )
    compare.add_argument("--runs-dir", type=Path, default=argparse.SUPPRESS, help="where runs live (default: runs/)")
    compare.add_argument(
        "--x", choices=("steps", "tokens"), default="steps", help="x axis of the loss curves (default: steps)"
    )
    compare.add_argument("--no-tui", action="store_true", help="print the comparison as text instead")

    export = commands.add_parser("export", help="write a run's metrics (CSV) and events (JSONL) to files")
    export.add_argument("run", nargs="?", help=f"{RUN_HELP}; default: the latest")
    export.add_argument(
        "-o", "--out", type=Path, default=EXPORT_DIR, metavar="DIR", help=f"where to write (default: {EXPORT_DIR}/)"
    )
    export.add_argument("--runs-dir", type=Path, default=argparse.SUPPRESS, help="where runs live (default: runs/)")

    nxt = commands.add_parser("next", help="the next run: config changes proposed from what a finished run recorded")
    nxt.add_argument("run", nargs="?", help=f"{RUN_HELP}; default: the latest")
    nxt.add_argument("--runs-dir", type=Path, default=argparse.SUPPRESS, help="where runs live (default: runs/)")
    nxt.add_argument(
        "--write",
        type=Path,
        metavar="OUT.yaml",
        help="write the run's config with the changes (none: as it was) and parent",
    )
    nxt.add_argument("--edit", action="store_true", help="open the knob editor with the changes applied (unsaved)")

    serve = commands.add_parser("serve", help="the same app in a browser (over an SSH tunnel), behind a secret link")
    serve.add_argument("--runs-dir", type=Path, default=argparse.SUPPRESS, help="where runs live (default: runs/)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000; 0: any free one)")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0: every interface)"
    )
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_ROOT, help="where runs live (default: runs/)")
    return parser


def _load(config_arg: str, overrides: list[str]) -> tuple[RunConfig, Path]:
    path = samples.resolve_config_path(config_arg)
    config = load_config(path, parse_overrides(overrides))
    if not read_yaml(path):
        # Almost always a mistake (a failed save, the wrong file): say what it means.
        print(
            f"warning: {path} is empty: every value is a default{' (plus --set)' if overrides else ''}; "
            "a sample to start from: loratop edit tiny-cpu-demo",
            file=sys.stderr,
        )
    return config, path


def _report(exc: ConfigError) -> int:
    for line in exc.problems:
        print(line, file=sys.stderr)
    count = len(exc.problems)
    print(f"loratop: {count} problem{'s' if count != 1 else ''} in the config; nothing was launched", file=sys.stderr)
    return EXIT_USAGE


def cmd_check(args: argparse.Namespace) -> int:
    """Validate and summarise a config, then warn about knobs likely to waste the run (still exit 0)."""
    try:
        config, path = _load(args.config, args.overrides)
    except ConfigError as exc:
        return _report(exc)
    print(summarise(config, path))
    advice = advise(config, gather_facts(config))
    warnings = [
        f"warning: {item.field} = {format_value(field_value(config, item.field))}: {item.message}" for item in advice
    ]
    space = disk_space_warning(config)
    if space is not None:
        warnings.append(space)
    warnings.extend(launch_warnings(config))
    warnings.extend(f"warning: {line} (run refuses it on this box)" for line in box_problems(config))
    for line in warnings:
        print(line)
    if warnings:
        count = len(warnings)
        print(f"{count} warning{'s' if count != 1 else ''} (advice only: the config is valid)")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    """Print the pre-flight memory estimate: full fine-tune, LoRA, QLoRA against the GPU."""
    from loratop.preflight.estimate import EstimateError, estimate, format_estimate, load_model_shape, visible_gpu_total

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
    est = estimate(shape, config, gpu_total, gpu_name)
    print(format_estimate(est))
    gpus = config.distributed.world_size if args.gpus is None else args.gpus
    if gpus > 1:
        from loratop.preflight.estimate import format_per_gpu

        print()
        print("\n".join(format_per_gpu(est, gpus)))
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """Probe the GPU in a subprocess (:mod:`preflight.fit_runner`), print its table and recommendation."""
    from loratop.preflight.config_rewrite import LayoutLost
    from loratop.preflight.fit_plan import format_result, parse_budget, parse_headroom, written_config
    from loratop.preflight.fit_runner import FitProbeProcess, no_gpu_line

    def _usage(line: str) -> int:
        print(line, file=sys.stderr)
        return EXIT_USAGE

    try:
        budget, headroom = parse_budget(args.budget), parse_headroom(args.headroom)
        config, path = _load(args.config, args.overrides)
    except ConfigError as exc:
        return _report(exc)
    except ValueError as exc:
        return _usage(f"loratop: {exc}")
    if args.write is not None and args.write.exists():
        return _usage(f"loratop: --write {args.write}: already exists; choose a new name (nothing was overwritten)")
    refusal = no_gpu_line(args.config)
    if refusal is not None:
        return _usage(refusal)
    print(f"loratop fit: probing {path} within {budget:g} s (loading the model first)…", file=sys.stderr)
    probe = FitProbeProcess(path, args.overrides, budget, headroom)
    try:
        for message in probe.messages():
            if message.get("kind") == "progress":
                print(f"  {message.get('message', '')}", file=sys.stderr, flush=True)
        outcome = probe.finish()
    except KeyboardInterrupt:
        probe.stop()
        return 130
    if outcome.result is None:
        return _usage(f"loratop: {outcome.refused or outcome.failed}")
    print(format_result(outcome.result))
    if args.write is not None and outcome.result.recommended is None:
        print(f"nothing written to {args.write}: no candidate to recommend", file=sys.stderr)
    elif args.write is not None:
        parent = str(path.resolve())
        try:
            text = written_config(path.read_text(), outcome.result, parent)
        except LayoutLost:
            from loratop.preflight.config import dump_config
            from loratop.preflight.fit_plan import recommended_changes

            whole = config.model_copy(deep=True)
            for key, value in recommended_changes(outcome.result).items():
                setattr(whole.training, key.split(".")[1], value)
            whole.output_dir, whole.parent = None, parent
            text = dump_config(whole)
        args.write.write_text(text)
        print(f"wrote {args.write} (parent: {parent}); check it with: loratop check {args.write}")
    return 0


def summarise(config: RunConfig, path: Path) -> str:
    """A few lines saying what the config will do."""
    q = config.quantization
    lora = config.lora
    t = config.training
    total_rows = None
    try:
        info = inspect_data(config.data.path, config.data.format)
        total_rows = info.rows
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
            *_eval_line(config, total_rows),
            *_ranks_line(config),
            f"  output  {config.output_dir}",
            *_unchecked_notes(config),
        ]
    )


def _eval_line(config: RunConfig, rows: int | None) -> list[str]:
    d, t = config.data, config.training
    when = f"every {t.eval_steps} steps and at the end" if t.eval_steps else "at the end"
    stop = (
        f"; early stopping after {t.early_stopping_patience} evals without a better one"
        if t.early_stopping_patience
        else ""
    )
    if d.eval_path is not None:
        return [f"  eval    {d.eval_path}, {when}{stop}"]
    if d.eval_split is None:
        return ["  eval    none (set data.eval_split or data.eval_path for a held-out loss)"]
    if rows is not None and d.max_rows:
        rows = min(rows, d.max_rows)
    held = held_out_rows(d.eval_split, rows or 0) if rows or d.eval_split >= 1 else None
    count = f"{held:,} rows" if held is not None else f"{d.eval_split:g} of the rows"
    return [f"  eval    {count} held out (seed {t.seed}), {when}{stop}"]


def _ranks_line(config: RunConfig) -> list[str]:
    d = config.distributed
    if d.world_size == 1:
        return []
    where = f"node {d.node_rank} of {d.nnodes}, rendezvous {d.rdzv_endpoint}" if d.nnodes > 1 else "this box"
    backend = d.backend if d.backend != "auto" else "auto: nccl on GPUs, gloo on CPU"
    return [
        f"  ranks   {d.world_size} = {d.nproc_per_node} per node × {d.nnodes} node(s), {d.strategy}, "
        f"{backend} ({where}); effective batch {d.world_size}×{config.training.per_device_train_batch_size}"
        f"×{config.training.gradient_accumulation_steps}"
    ]


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
    from loratop.preflight.launcher import CannotRunHere, launch
    from loratop.preflight.model_config import unavailable_model

    # In seconds, before anything loads: one line for each thing the run could not fetch.
    missing = unavailable_model(config.model.name_or_path)
    unfetchable = [f"model.name_or_path = {config.model.name_or_path}: {missing}"] if missing is not None else []
    unfetchable += unavailable_data(config)
    if unfetchable:
        for line in unfetchable:
            print(f"loratop: {line}", file=sys.stderr)
        return EXIT_USAGE
    preflight = preflight_line(config)
    if args.no_tui:
        print(preflight)
    space = disk_space_warning(config)
    if space is not None:
        print(space, file=sys.stderr)
    try:
        run = launch(config, path)
    except RunDirError as exc:  # taken by a parallel launch since the check, or not creatable
        return _report(ConfigError([f"output_dir: {exc}"]))
    except CannotRunHere as exc:  # this box cannot run it (no GPU for FSDP...), or the hub went away
        print(f"loratop: {exc}; nothing was launched", file=sys.stderr)
        return EXIT_USAGE
    if config.distributed.node_rank > 0:
        from loratop.cli.headless import follow_worker_node

        return follow_worker_node(run, config)
    if args.no_tui:
        from loratop.cli.headless import follow_launched

        return follow_launched(run)
    notice = preflight if space is None else f"{preflight}\n{space}"
    return _dashboard(run.run_dir, run.events_fd, notice=notice, process=run.process)


def _dashboard(
    run_dir: Path | None,
    pipe_fd: int | None = None,
    runs_root: Path = DEFAULT_ROOT,
    notice: str | None = None,
    process: subprocess.Popen[bytes] | None = None,
) -> int:
    """Run the Textual app; say how to come back when the user detached."""
    from loratop.tui.app import LoratopApp

    return _run_and_say(LoratopApp(run_dir, pipe_fd, runs_root, notice=notice, process=process), run_dir)


def _run_and_say(app: LoratopApp, run_dir: Path | None = None) -> int:
    """Run the dashboard; when it ended on a run's monitor (detached, or on an error), say how
    to come back to that run: the one it opened on, or one launched from the editor there."""
    from loratop.tui.screens.monitor_screen import DETACHED

    outcome, code = run_app(app)
    run_dir = app.ended_on or run_dir
    if code and run_dir is not None:
        print(
            f"loratop: the dashboard ended on an error (above); the run is not affected: loratop attach {run_dir}",
            file=sys.stderr,
        )
    elif outcome == DETACHED and run_dir is not None:
        # The run detached from: after a launch from the editor, not the one the dashboard opened on.
        print(f"detached; the run goes on. Come back with: loratop attach {run_dir}")
    return code


def run_app(app: LoratopApp) -> tuple[str | None, int]:
    """Run the dashboard until it ends.

    Returns:
        How the session ended (``LoratopApp.run``'s value) and the exit code: ``0``, or
        Textual's ``1`` when the app ended on an unhandled exception (a bug: Textual has
        printed its traceback), so that the shell, a script or ``loratop serve`` sees the crash.
    """
    outcome = app.run()
    return outcome, app.return_code or 0


def _compare_dashboard(run_dirs: list[Path], x_axis: str = "steps", runs_root: Path = DEFAULT_ROOT) -> int:
    """Open the compare screen on finished (or running) runs."""
    from loratop.tui.app import LoratopApp

    return _run_and_say(LoratopApp(None, runs_root=runs_root, compare=run_dirs, compare_x=x_axis))


def _edit_target(given: str, runs_dir: Path) -> Path:
    """What ``loratop edit`` opens: a run by its folder or full name, else a config file or
    sample, else a run by a prefix or suffix of its name.

    Raises:
        RunNotFound: Several runs match, or nothing does (the message lists the samples and
            suggests the closest runs and configs).
    """
    try:
        return find_run(given, runs_dir, partial=False)
    except RunNotFound:
        pass
    try:
        path = samples.resolve_config_path(given)
        if path.is_file():
            return path
    except ConfigError:
        pass
    try:
        return find_run(given, runs_dir)
    except AmbiguousRun as exc:
        near = samples.closest_configs(given)
        if not near:
            raise
        raise AmbiguousRun(f"{exc}; or did you mean the config {samples.either(near)}?", exc.candidates) from None
    except RunNotFound as exc:
        message = samples.config_not_found(given, f"a run under {runs_dir}/", exc.suggestions)
        raise RunNotFound(message) from None


def cmd_edit(args: argparse.Namespace) -> int:
    """Open the knob editor on a run (rerun with changes) or a config file."""
    from loratop.tui.app import LoratopApp

    try:
        target = _edit_target(args.target, args.runs_dir)
    except RunNotFound as exc:
        print(f"loratop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        read_yaml(target / CONFIG if target.is_dir() else target)
    except ConfigError as exc:
        return _report(exc)
    return _run_and_say(LoratopApp(None, runs_root=args.runs_dir, edit=target))


def cmd_attach(args: argparse.Namespace) -> int:
    """Open the monitor of an existing run (replay, then follow)."""
    try:
        run_dir = find_run(args.run, args.runs_dir)
    except RunNotFound as exc:
        print(f"loratop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return _dashboard(run_dir)


def cmd_ls(args: argparse.Namespace) -> int:
    """Print the run history: knobs, outcome and parent of each run, one line each."""
    from loratop.core.archive import archive_dir, archived_runs
    from loratop.core.runs import run_names, sort_runs
    from loratop.tui.models.run_table import ls_lines

    on_terminal = sys.stdout.isatty()
    if args.index:
        _settle_runs(args.runs_dir, run_names(args.runs_dir), progress=on_terminal and sys.stderr.isatty())
    runs = sort_runs(list_runs(args.runs_dir), args.sort)
    archived = len(archived_runs(args.runs_dir))
    if not runs:
        more = f"; {archived} archived in {archive_dir(args.runs_dir)}/" if archived else ""
        print(f"no runs under {args.runs_dir}/ (start one with: loratop demo){more}")
        return 0
    # Piped, every column and every name whole, whatever COLUMNS says: Python's readline, for
    # one, exports COLUMNS=80 to every child, and a script or pager wants the whole table.
    width = shutil.get_terminal_size().columns if on_terminal else None
    lines, notes = ls_lines(
        runs, width, on_terminal=on_terminal, archived=archived, archive_dir=f"{archive_dir(args.runs_dir)}/"
    )
    print("\n".join(lines))
    uncached = [run.name for run in runs if run.uncached]
    if uncached and args.index:  # asked for: said piped too
        notes.append(
            f"{len(uncached)} finished run(s) could not be cached (a read-only folder or a full disk?), "
            f"so every look reads them whole: {', '.join(uncached)}"
        )
    elif uncached and on_terminal:  # piped, stderr stays as quiet as before
        notes.append(f"{len(uncached)} finished run(s) read whole (no cache): loratop ls --index caches them")
    for note in notes:
        print(note, file=sys.stderr)
    return 0


def _settle_runs(runs_dir: Path, names: list[str], *, progress: bool) -> None:
    """``ls --index``: each run's caches, as its end writes them; on a terminal, a line that
    says which run it is at (runs from before the index are read whole: seconds each)."""
    from loratop.core.run_summary import settle_finished_run

    for done, name in enumerate(names):
        if progress:
            _say_on_one_line(f"caching {done + 1}/{len(names)}: {name}")
        settle_finished_run(runs_dir / name)
    if progress and names:
        _say_on_one_line("")


@contextlib.contextmanager
def _doing(what: str) -> Iterator[None]:
    """A line on a terminal's stderr (``reading RUN …``) while a run's events are read or written
    (a long run, or one from an older loratop without its index: seconds), cleared once done."""
    shown = sys.stderr.isatty()
    if shown:
        _say_on_one_line(f"{what} …")
    try:
        yield
    finally:
        if shown:
            _say_on_one_line("")


def _say_on_one_line(text: str) -> None:
    """``text`` on stderr in place of the line there (the terminal's width at most: a line that
    wraps is not rewritten by ``\\r``); empty: the line cleared."""
    line = text[: shutil.get_terminal_size().columns - 1]
    print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare runs: text with ``--no-tui``, else the compare screen."""
    from loratop.tui.models.compare import format_compare, load_compared
    from loratop.tui.models.run_table import terminal_safe

    names: list[str] = list(args.runs)
    run_dirs: list[Path] = []
    if len(names) < 2:
        try:
            pair = _default_pair(names[0] if names else None, args.runs_dir)
        except RunNotFound as exc:
            print(f"loratop: {exc}", file=sys.stderr)
            return EXIT_USAGE
        names = [str(path) for path in pair]
    for name in names:
        try:
            run_dir = find_run(name, args.runs_dir)
        except RunNotFound as exc:
            print(f"loratop: {exc}", file=sys.stderr)
            return EXIT_USAGE
        same = next((names[i] for i, seen in enumerate(run_dirs) if seen.resolve() == run_dir.resolve()), None)
        if same is not None:
            twice = f"{name!r} is given twice" if same == name else f"{same!r} and {name!r} are the same run"
            print(f"loratop: {twice}; compare needs different runs", file=sys.stderr)
            return EXIT_USAGE
        run_dirs.append(run_dir)
    if args.no_tui:
        width = shutil.get_terminal_size((80, 24)).columns
        compared = []
        for run_dir in run_dirs:
            with _doing(f"reading {run_dir.name}"):
                compared.append(load_compared(run_dir))
        text = format_compare(compared, width=width, x=args.x)
        print("\n".join(terminal_safe(line) for line in text.split("\n")))
        return 0
    return _compare_dashboard(run_dirs, args.x, args.runs_dir)


def _default_pair(name: str | None, root: Path) -> tuple[Path, Path]:
    """What ``loratop compare`` with one run (or none: the latest) compares: the run's parent
    (what it was tweaked from) and the run; with no parent run still around, the run started
    just before it. Says on stderr which pair it chose.

    Raises:
        RunNotFound: No such run, or nothing to compare it with.
    """
    from loratop.core.runs import resolve_parent, summarise_run

    run_dir = find_run(name, root)
    run = summarise_run(run_dir)
    base = resolve_parent(run_dir, run.parent)
    why = "its parent"
    if base is None:
        why = "the run started before it"
        earlier = [
            r
            for r in list_runs(root)
            if r.run_dir.resolve() != run_dir.resolve() and (r.started_at or 0) <= (run.started_at or 0)
        ]
        if not earlier:
            raise RunNotFound(f"{run_dir.name} has no parent run and no run before it to compare with; name two runs")
        base = max(earlier, key=lambda r: r.started_at or 0).run_dir
    print(f"comparing {run_dir.name} with {why}, {base.name}", file=sys.stderr)
    return base, run_dir


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run's metrics CSV and events JSONL; say where and how many rows."""
    from loratop.tui.models.export import export_files

    try:
        run_dir = find_run(args.run, args.runs_dir)
    except RunNotFound as exc:
        print(f"loratop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with _doing(f"exporting {run_dir.name}"):
            written = export_files(run_dir, args.out)
    except OSError as exc:
        print(f"loratop: cannot write to {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"exported {run_dir.resolve().name} to {args.out}/")
    for path, rows in written:
        kind = "events" if path.suffix == ".jsonl" else "evaluations" if path.stem.endswith("-eval") else "steps"
        print(f"{path}  ({rows:,} {kind})")
    return 0


def cmd_next(args: argparse.Namespace) -> int:
    """Propose the next run from a finished run's record (:mod:`loratop.preflight.next_run`):
    print it, ``--write`` it as a config, or ``--edit`` it in the knob editor."""
    from loratop.core.runs import read_run
    from loratop.preflight.next_run import next_run, next_run_yaml

    try:
        run_dir = find_run(args.run, args.runs_dir)
        with _doing(f"reading {run_dir.name}"):
            state, _ = read_run(run_dir)
        tree = read_yaml(run_dir / CONFIG)
        plan = next_run(state, tree)
    except RunNotFound as exc:
        print(f"loratop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, ValueError) as exc:
        print(f"loratop: {run_dir.name}: its {CONFIG} cannot be read: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if state.is_live:
        print(f"loratop: {run_dir.name} is still training: its next run is proposed once it ends", file=sys.stderr)
        return EXIT_USAGE
    print(f"next run after {run_dir.name} ({state.status}, step {state.last_step}):")
    print("\n".join(plan.lines(min(shutil.get_terminal_size((80, 24)).columns, 80))))
    if args.write is not None:  # no proposal: the run's config as it was, for a rerun
        if args.write.exists():
            print(f"loratop: {args.write} already exists; nothing was overwritten", file=sys.stderr)
            return EXIT_USAGE
        try:
            args.write.write_text(next_run_yaml((run_dir / CONFIG).read_text(), plan, run_dir.resolve()))
        except OSError as exc:
            print(f"loratop: cannot write {args.write}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"wrote {args.write} (parent: {run_dir.name}); run it with: loratop run {args.write}")
    if args.edit and plan.proposals:
        from loratop.tui.app import LoratopApp

        return _run_and_say(LoratopApp(None, runs_root=args.runs_dir, edit=run_dir, next_run=state))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the home screen in a browser until Ctrl+C (:mod:`loratop.cli.serve`)."""
    from loratop.cli.serve import ServeError, serve

    try:
        serve(args.runs_dir, host=args.host, port=args.port)
    except ServeError as exc:
        print(f"loratop serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``loratop`` console script."""
    parser = build_parser()
    given = sys.argv[1:] if argv is None else argv
    unknown = _unknown_command(parser, given)
    if unknown is not None:
        print(unknown, file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(given)
    try:
        return _command(args)
    except BrokenPipeError:  # `loratop estimate CONFIG | head`: the reader has what it wanted
        from loratop.cli.headless import silence_stdout

        silence_stdout()
        return 0


def _unknown_command(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """One line for a mistyped command, with the closest ones (argparse lists all and no guess)."""
    import difflib

    first = next((arg for arg in argv if not arg.startswith("-")), None)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names = list(subparsers.choices)
    if first is None or first in names or argv.index(first) > 0:  # an option's value, or fine
        return None
    close = difflib.get_close_matches(first, names, n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"loratop: no command {first!r}{hint} (commands: {', '.join(names)})"


def _command(args: argparse.Namespace) -> int:
    if args.command == "check":
        return cmd_check(args)
    if args.command == "estimate":
        return cmd_estimate(args)
    if args.command == "fit":
        return cmd_fit(args)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "demo":
        return cmd_run(args, config_arg=samples.DEMO)
    if args.command == "edit":
        return cmd_edit(args)
    if args.command == "attach":
        return cmd_attach(args)
    if args.command == "ls":
        return cmd_ls(args)
    if args.command == "compare":
        return cmd_compare(args)
    if args.command == "export":
        return cmd_export(args)
    if args.command == "next":
        return cmd_next(args)
    if args.command == "serve":
        return cmd_serve(args)
    return _dashboard(None, runs_root=args.runs_dir)


if __name__ == "__main__":
    sys.exit(main())
