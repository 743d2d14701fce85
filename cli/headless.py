"""``loratop run CONFIG --no-tui``: follow a run's events and print a compact line now and then.

Reads the trainer's pipe; a ``seq`` gap (the trainer left events off a full pipe) is
filled from ``events.jsonl``, the source of truth. Ctrl-C asks the trainer to stop at
the next step boundary and save the adapter (it passes the trainer a SIGINT, so the run reads
"stopped by SIGINT", as Ctrl-C); a second Ctrl-C detaches and leaves the run going.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, TextIO, cast

from loratop.core import events as ev
from loratop.core.distributed import exit_words, rank_label
from loratop.core.event_stream import PipeStream
from loratop.core.run_dir import EVENTS, LOG, SIGKILL_HINT, exit_cause, read_status, record_lost
from loratop.core.run_state import RunState
from loratop.preflight.launcher import LaunchedRun
from loratop.tui.models.log_lines import telling_lines
from loratop.tui.models.panels import fmt_bytes, fmt_loss

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def fmt_memory(event: dict[str, Any]) -> str:
    """One memory event in a few words: GPU used/total (or why there is none) and host RSS."""
    rss = fmt_bytes(event.get("host", {}).get("rss"))
    gpus = event.get("gpus") or []
    if gpus:
        gpu = " ".join(f"gpu{g['index']} {fmt_bytes(g['used'])}/{fmt_bytes(g['total'])}" for g in gpus)
        return f"{gpu}  rss {rss}"
    if event.get("gpu_state") == "no_nvidia_gpu":
        return f"rss {rss} (no NVIDIA GPU)"
    return f"rss {rss} (GPU n/a: {event.get('gpu_note', 'unknown')})"


def fmt_ranks(event: dict[str, Any]) -> str:
    """A ``ranks`` event in a few words: each rank's GPU (or RSS), the worst one marked."""
    rows = event.get("ranks") or []
    worst = event.get("worst")
    parts = []
    for i, row in enumerate(rows):
        gpu = row.get("gpu")
        if gpu:
            figure = f"{fmt_bytes(gpu.get('used'))}/{fmt_bytes(gpu.get('total'))}"
        else:
            figure = f"rss {fmt_bytes(row.get('rss'))}"
        parts.append(f"{rank_label(row.get('node'), row.get('local_rank'))} {figure}" + ("*" if i == worst else ""))
    return f"ranks {', '.join(parts)} (* worst)" if parts else "ranks: no report yet"


@dataclass
class HeadlessPrinter:
    """Turns events into lines for a terminal or a log file.

    The run itself is :attr:`state`, the same :class:`RunState` every other view of loratop
    folds (the dashboard, ``ls``, compare, export); the printer only decides what each event
    is worth a line, through one table (:attr:`SHOW`)."""

    state: RunState
    """The run, folded from every event handled."""
    out: TextIO = sys.stdout
    interval_s: float = 1.0
    """At most one step line per interval (plus the first and the last step)."""
    clock: Callable[[], float] = time.monotonic
    last_step: dict[str, Any] | None = None
    """The latest ``step`` event, as the step line shows it."""
    _last_print: float = field(default=-1e9, repr=False)
    _step_printed: bool = field(default=False, repr=False)

    SHOW: ClassVar[dict[str, str]] = {}
    """Event type → the method that prints it (filled below the class); other types print nothing."""

    @property
    def max_steps(self) -> int | None:
        steps = self.state.started.get("max_steps") if self.state.started else None
        return steps if isinstance(steps, int) else None

    @property
    def finished(self) -> dict[str, Any] | None:
        return cast("dict[str, Any] | None", self.state.finished)

    @property
    def last_t(self) -> float | None:
        """Time of the latest event: the trainer's last sign of life."""
        return self.state.last_t

    def handle(self, event: dict[str, Any]) -> None:
        """Fold the event into :attr:`state`, then print what it is worth printing."""
        self.state.apply(event)
        show = self.SHOW.get(event["type"])
        if show is not None:
            getattr(self, show)(event)

    def _log(self, event: dict[str, Any]) -> None:
        level = event.get("level")
        prefix = f"{level}: " if level else ""
        self._print(f"[trainer] {prefix}{event.get('message', '')}")

    def _eval(self, event: dict[str, Any]) -> None:
        best = event.get("best_step")
        best_text = "best so far" if best == event.get("step") else f"best {fmt_loss(event.get('best_loss'))} @{best}"
        took = event.get("duration_s")
        rows = event.get("eval_rows")
        self._print(
            f"eval at step {event.get('step')}: loss {fmt_loss(event.get('eval_loss'))} ({best_text}; "
            + (f"{rows} rows" if isinstance(rows, int) else "rows –")
            + (f", {took:.1f} s)" if isinstance(took, (int, float)) else ")")
        )

    def _alert(self, event: dict[str, Any]) -> None:
        self._print(f"ALERT {event.get('kind', '')}: {event.get('message', '')}")

    def _checkpoint(self, event: dict[str, Any]) -> None:
        what = "adapter saved" if event.get("final") else "checkpoint saved"
        last = self.last_step.get("step") if self.last_step else None
        note = (
            f" (the best eval's; training ran to step {last})"
            if event.get("final") and last not in (None, event.get("step"))
            else ""
        )
        self._print(f"{what} at step {event.get('step')}{note}: {event.get('path')}")

    def _spike(self, event: dict[str, Any]) -> None:
        self._print(
            f"SPIKE {event.get('severity', '')} at step {event.get('step')}: loss {fmt_loss(event.get('loss'))} "
            f"(baseline {fmt_loss(event.get('baseline'))}, {event.get('kind', '')})"
        )

    def _oom_risk(self, event: dict[str, Any]) -> None:
        self._print(f"OOM risk {str(event.get('level')).upper()}: {event.get('reason')}")

    def _paged_state(self, event: dict[str, Any]) -> None:
        if not event.get("available"):
            return
        self._print(
            f"paged optimizer state: {fmt_bytes(event.get('paged_bytes'))} in {event.get('paged_tensors')} "
            f"tensors; {fmt_bytes(event.get('unpaged_bytes'))} kept unpaged"
            + (f" ({event['note']})" if event.get("note") else "")
        )
        self._print(f"spill counting: {event.get('spill_method')} ({event.get('spill_reason')})")

    def _spill(self, event: dict[str, Any]) -> None:
        self._print(
            f"SPILL at step {event.get('step')}: {fmt_bytes(event.get('bytes'))} evicted "
            f"({event.get('method')}; {event.get('total_events')} so far)"
        )

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _run_started(self, event: dict[str, Any]) -> None:
        params = event.get("params", {})
        model = event.get("model", {})
        device = event.get("device", {})
        frozen = "base frozen" if params.get("base_frozen") else "BASE NOT FROZEN"
        ranks = f" × {device['world_size']} ranks" if device.get("world_size") else ""
        self._print(
            f"run {event.get('run_name')}: {model.get('name_or_path')} ({model.get('model_type')}) on "
            f"{device.get('kind')}{ranks}; trainable {params.get('trainable', 0):,} / {params.get('total', 0):,} "
            f"= {100 * params.get('fraction', 0):.3f}% ({frozen}); {self.max_steps} steps"
        )

    def _step(self, event: dict[str, Any]) -> None:
        self.last_step = event
        step = event.get("step")
        now = self.clock()
        due = now - self._last_print >= self.interval_s
        if not (due or not self._step_printed or step == self.max_steps):
            return
        self._last_print = now
        self._step_printed = True
        total = f"/{self.max_steps}" if self.max_steps else ""
        lr, grad = event.get("lr"), event.get("grad_norm")
        parts = [f"step {step}{total}", f"loss {fmt_loss(event.get('loss'))}"]
        if isinstance(lr, float):
            parts.append(f"lr {lr:.2e}")
        if isinstance(grad, float):
            parts.append(f"grad {fmt_loss(grad)}")
        ranks, memory = self.state.ranks, self.state.memory
        if ranks:
            parts.append(fmt_ranks(cast("dict[str, Any]", ranks)))
        else:
            parts.append(fmt_memory(cast("dict[str, Any]", memory)) if memory else "memory: no sample yet")
        self._print("  ".join(parts))

    def _finished(self, event: dict[str, Any]) -> None:
        status = event.get("status")
        stopped_by = event.get("stopped_by") if status == ev.STOPPED else None
        by = f" by {stopped_by}{' (Ctrl-C)' if stopped_by == 'SIGINT' else ''}" if stopped_by else ""
        line = f"run {status}{by} after {event.get('duration_s', 0):.1f} s"
        if self.last_step:
            line += f"; last step {self.last_step.get('step')} loss {fmt_loss(self.last_step.get('loss'))}"
        self._print(line)
        if event.get("rescued_to"):
            self._print(f"a copy of the run (events, config, adapter) is in {event['rescued_to']}")
        error = event.get("error")
        if error:
            for tb_line in error.get("traceback", [])[-6:]:
                self._print(f"  {tb_line}")
            self._print(f"error: {error.get('message')}")
            for suggestion in error.get("suggestions", []):
                self._print(f"  try: {suggestion}")


HeadlessPrinter.SHOW.update(
    {
        ev.LOG: "_log",
        ev.RUN_STARTED: "_run_started",
        ev.EVAL: "_eval",
        ev.ALERT: "_alert",
        ev.STEP: "_step",
        ev.CHECKPOINT: "_checkpoint",
        ev.SPIKE: "_spike",
        ev.OOM_RISK: "_oom_risk",
        ev.PAGED_STATE: "_paged_state",
        ev.SPILL: "_spill",
        ev.RUN_FINISHED: "_finished",
    }
)


def follow_launched(run: LaunchedRun, out: TextIO = sys.stdout) -> int:
    """Print a launched run until it finishes; return the CLI's exit code."""
    printer = HeadlessPrinter(RunState(run.run_dir), out=out)
    stream = PipeStream(run.events_fd, run.run_dir / EVENTS)
    interrupts = 0

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            # SIGINT, as Ctrl-C: the trainer stops on it as on SIGTERM, and its report names it.
            run.process.send_signal(signal.SIGINT)  # our own child: Popen knows if it has been reaped
            print(
                "\nstopping at the next step boundary and saving the adapter "
                "(Ctrl-C again to stop watching; the stop still happens)",
                file=out,
                flush=True,
            )
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    pid = run.process.pid
    who = f"torchrun agent pid {pid}, {run.ranks} rank(s) here" if run.ranks is not None else f"trainer pid {pid}"
    print(f"run folder: {run.run_dir}  ({who}, log: {run.run_dir / LOG})", file=out, flush=True)
    try:
        while True:
            batch = stream.read()
            if batch is None:
                break
            for event in batch:
                printer.handle(event)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, previous)
        return _stopped_watching(run, out)
    except BrokenPipeError:
        # Our reader went away (`loratop run ... | head`): stop printing, leave the run going.
        signal.signal(signal.SIGINT, previous)
        silence_stdout()
        return EXIT_INTERRUPTED
    finally:
        os.close(run.events_fd)
    try:
        code = run.process.wait()  # the pipe closed: the trainer is finishing
    except KeyboardInterrupt:  # the second Ctrl-C can land here too: no traceback
        return _stopped_watching(run, out)
    finally:
        signal.signal(signal.SIGINT, previous)
    for event in stream.rest_from_file():
        printer.handle(event)
    if stream.skipped:
        print(f"note: {stream.skipped} garbled line(s) on the events pipe were skipped", file=out)
    if printer.finished is None:
        cause = exit_cause(code)
        step = printer.last_step.get("step") if printer.last_step else None
        record_lost(run.run_dir, cause, last_step=step, ended_at=printer.last_t, exit_code=code)
        when = f"at step {step}" if step is not None else "before the first step"
        _print_log_tail(run.run_dir / LOG, out)
        # The diagnosis last: what a terminal keeps in view when the output stops.
        print(f"error: trainer {cause} {when}, before reporting how the run ended", file=out)
        if "SIGKILL" in cause:
            print(f"  {SIGKILL_HINT}", file=out)
        print(f"  full log: {run.run_dir / LOG}", file=out)
        return EXIT_FAILED
    status = printer.finished.get("status")
    if status == ev.COMPLETED:
        return EXIT_OK
    if status == ev.STOPPED:
        # Early stopping is how the run was meant to end; any other stop was asked for.
        return EXIT_OK if printer.finished.get("stopped_by") == "early stopping" else EXIT_INTERRUPTED
    return EXIT_FAILED


def follow_worker_node(run: LaunchedRun, config: Any, out: TextIO = sys.stdout) -> int:
    """``loratop run`` on a box other than node 0: its ranks train here, but rank 0, the events
    and the dashboard are on node 0. Wait for this box's ranks and say how they ended;
    Ctrl-C stops watching (the ranks go on: they stop when rank 0 does)."""
    d = config.distributed
    first = d.node_rank * d.nproc_per_node
    print(
        f"node {d.node_rank} of {d.nnodes}: ranks {first}–{first + d.nproc_per_node - 1} train here "
        f"(agent pid {run.process.pid}, log: {run.run_dir / LOG}).\n"
        f"The run's events, adapter and dashboard are on node 0 (rendezvous {d.rdzv_endpoint}): "
        "watch it there with loratop attach.",
        file=out,
        flush=True,
    )
    os.close(run.events_fd)
    try:
        code = run.process.wait()
    except KeyboardInterrupt:
        print(f"\nstopped watching; this box's ranks go on (agent pid {run.process.pid})", file=out)
        return EXIT_INTERRUPTED
    status = read_status(run.run_dir) or {}
    if code == 0:
        print(f"node {d.node_rank}: every rank here finished", file=out)
        return EXIT_OK
    print(f"node {d.node_rank}: {status.get('error') or 'torchrun ' + exit_words(code)}", file=out)
    for line in _tail(run.run_dir / LOG, 10):
        print(f"  {line}", file=out)
    return EXIT_FAILED


def silence_stdout() -> None:
    """After a ``BrokenPipeError`` on stdout (``loratop ... | head``): point it at /dev/null,
    so neither later prints nor the interpreter's final flush raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _stopped_watching(run: LaunchedRun, out: TextIO) -> int:
    """The second Ctrl-C: stop watching. The stop the first one asked for still happens."""
    print(
        f"stopped watching; the trainer (pid {run.process.pid}) still stops at the next step boundary and saves "
        f"the adapter. Its events: {run.run_dir / EVENTS}",
        file=out,
    )
    return EXIT_INTERRUPTED


LOG_TAIL_LINES = 40
"""Of a lost trainer's log, the last lines looked at for what may say why it died..."""
LOG_TAIL_SHOWN = 8
"""...and the most of those shown (the diagnosis after them must stay in view)."""


def _print_log_tail(path: Path, out: TextIO) -> None:
    """The last lines of a lost trainer's log that may say why (a library's last words), each on
    one row of the terminal; not the Trainer's per-step metric printouts (the step lines above
    show those figures), progress bars, nor warnings known to be harmless."""
    kept, left_out = telling_lines(_tail(path, LOG_TAIL_LINES))
    if not kept:
        print(f"the last lines of {path.name} say nothing of why (metric printouts, bars, harmless warnings)", file=out)
        return
    also = " (metric printouts, bars and harmless warnings left out)" if left_out else ""
    print(f"last lines of {path.name}{also}:", file=out)
    width = max(40, shutil.get_terminal_size().columns) - 2
    for line in kept[-LOG_TAIL_SHOWN:]:
        print(f"  {line if len(line) <= width else line[: width - 1] + '…'}", file=out)


def _tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log, read from its last 256 KiB (a long run's log is
    hundreds of megabytes of per-step printouts)."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - (256 << 10)))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    # tqdm-style bars redraw with \r: their latest state only.
    return [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.rstrip().split("\n")[-lines:]]
