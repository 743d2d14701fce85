"""The training subprocess: ``python -m loratop.trainer CONFIG --run-dir DIR [--events-fd N]``.

Reads top to bottom: :meth:`Run.setup` loads the 4-bit base, attaches LoRA, audits
what trains and builds the TRL trainer (:mod:`trainer.run_build`, :mod:`trainer.trainer_args`);
:meth:`Run.fit` trains, reporting each optimizer step through the event sink. Library output
(transformers, TRL, datasets, bitsandbytes all print) goes to this process's stdout/stderr,
which the launcher sends to ``trainer.log``; events go only to the sink.

Signals: SIGINT/SIGTERM stop at the next step boundary and save the adapter
(status ``stopped``); SIGUSR1 saves a checkpoint at the next step boundary and goes on.
A full disk or a removed run folder stops the run too, its adapter saved where there is room
(:mod:`trainer.run_folder`).

Under torchrun (:mod:`trainer.agent` starts it) every rank runs this module. Rank 0
writes events, ``status.json`` and the adapter; the others write nothing. About every
0.2 s, at a step boundary, the ranks meet (:meth:`Run.sync_ranks`,
:class:`~loratop.trainer.rank_meeting.RankMeeting`): whether a signal asked to stop or
checkpoint, so all ranks act at the same step, and now and then one row each (memory, OOM
level, spills) for rank 0 to report.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from loratop.core import events as ev
from loratop.core.distributed import AGENT_ENV, RankInfo, rank_info
from loratop.core.run_dir import (
    CONFIG,
    EVENTS,
    RunDirTaken,
    hold_run_dir,
    now,
    release_reserve,
)
from loratop.core.spikes import SpikeDetector
from loratop.preflight.config import ConfigError, RunConfig, dump_config, load_config
from loratop.trainer.best_adapter import BestAdapter
from loratop.trainer.eval_report import EvalReporter
from loratop.trainer.event_sink import EventSink, RunSink
from loratop.trainer.memory_sampler import MemorySampler
from loratop.trainer.rank_meeting import STOP_CODES, STOP_REASONS, SYNC_INTERVAL_S, RankMeeting
from loratop.trainer.run_build import library_versions, versions_line
from loratop.trainer.run_ending import failure
from loratop.trainer.run_folder import FOLDER_CHECK_S, Every, RunFolder, disk_full_message, short_reason
from loratop.trainer.trainer_args import distributed_args
from loratop.trainer.trainer_args import refuse_padding_free as _refuse_padding_free
from loratop.trainer.user_error import UserFacingError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

# Exit codes by run_finished status.
EXIT_BY_STATUS = {
    ev.COMPLETED: EXIT_OK,
    ev.STOPPED: EXIT_OK,
    ev.FAILED: EXIT_FAILED,
    ev.OOM: EXIT_FAILED,
    ev.DISK_FULL: EXIT_FAILED,
}

CANNOT_WRITE = ("disk full", "events.jsonl cannot be written", "run folder removed")
"""Stops for the run folder's sake: no last evaluation after them."""


class Run:
    """One training run, from loading the model to the last event.

    Args:
        config: The validated config (``output_dir`` is the run folder).
        run_dir: The run folder; created if missing.
        sink: Where events go (a :class:`NullSink` on ranks other than 0).
        rank: This process's place in a run of several ranks.
    """

    def __init__(self, config: RunConfig, run_dir: Path, sink: RunSink, rank: RankInfo | None = None) -> None:
        self.rank = rank or RankInfo()
        self.config = config
        self.run_dir = run_dir
        self.sink = sink
        self.stop_requested: str | None = None
        """Why the run stops (a signal's name, a spike, the disk, early stopping), once asked."""
        self.save_requested = False
        self.save_signals = 0
        """SIGUSR1s received: under torchrun, each is one checkpoint, whichever rank got it first."""
        self.agreed_stop: str | None = None
        """Several ranks: the stop every rank agreed on at the last meeting."""
        self.agreed_no_save = False
        """Several ranks: some rank cannot write (a full disk), so none checkpoints."""
        self.started_at = now()
        self._facts: dict[str, Any] = {"model": {}, "device": {}, "data": {}, "params": {}}
        """What ``run_started`` says of the model, device, data and trainable parameters."""
        self._last_step = 0
        self.watch: Any = None
        """The run's MemoryWatch, once the trainer is built."""
        self._sampler = MemorySampler(sink.emit, config.monitor.memory_sample_hz)
        self.spikes = SpikeDetector(sensitivity=config.monitor.spike_sensitivity)
        """Fed every step's loss and grad norm (see :meth:`on_spike`)."""
        self.folder = RunFolder(run_dir, sink, config, self.rank)
        self._folder_watch = Every(FOLDER_CHECK_S, self._check_folder, name="loratop-folder")
        every = 1.0 / config.monitor.memory_sample_hz
        self.meeting = RankMeeting(self.rank, sink, every, config.training.save_steps or 0)
        t = config.training
        self.evals = EvalReporter(sink, config.monitor.overfit_evals, t.early_stopping_patience)
        """Every evaluation so far: its events, the best one, overfitting, early stopping."""
        self._eval_size: tuple[int | None, int] = (None, 0)
        sharded = config.distributed.strategy == "fsdp" and self.rank.distributed
        self.best = BestAdapter(keeps=t.early_stopping_patience is not None and self.rank.is_main and not sharded)

    # -- signals ----------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Stop on SIGINT/SIGTERM, checkpoint on SIGUSR1, both at a step boundary."""
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGUSR1, self._on_save_signal)
        # The launcher's terminal going away must not end the run.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    # Handlers only set flags: they run between two bytecodes of the main thread, which
    # may be inside EventSink.emit holding its lock; emitting here could deadlock.
    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested is None:
            self.stop_requested = signal.Signals(signum).name

    def _on_save_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.rank.distributed:  # several ranks: the ranks agree first (sync_ranks)
            self.save_requested = True
        self.save_signals += 1

    def _check_folder(self) -> None:
        """Between steps too (a step may take minutes): a full disk or a removed folder asks
        the run to stop at the next step boundary. Only sets a flag, like a signal handler."""
        reason = self.folder.stop_reason() if self.stop_requested is None else None
        if reason is not None and self.stop_requested is None:  # a signal may have come meanwhile
            self.stop_requested = reason

    # -- the run ----------------------------------------------------------------

    def execute(self) -> int:
        """Set up, train, and always finish with one ``run_finished`` event.

        Returns:
            The process exit code.
        """
        self._sampler.start()
        main = self.rank.is_main
        if main:
            self._folder_watch.start()
        status, error, trainer = ev.COMPLETED, None, None
        try:
            self.folder.mark_running(self.started_at)
            trainer = self.setup()
            if self.stop_requested:
                self.sink.emit(ev.LOG, message=f"{self.stop_requested} before the first step: not training")
                status = ev.STOPPED
            else:
                self.fit(trainer)
                status = ev.STOPPED if self.stop_requested else ev.COMPLETED
        except UserFacingError as exc:
            status, error = ev.FAILED, {"message": str(exc), "traceback": []}
        except BaseException as exc:  # the run must always report how it ended
            status, error = failure(exc, self._last_step, self.watch, self._sampler.last)
            if status == ev.DISK_FULL:
                print(f"loratop trainer: {error['message']}", file=sys.stderr)
                self.folder.drop_torn_checkpoint(self._last_step)
        finally:
            self._close_watch()
            self._sampler.stop()
            if main:
                self._folder_watch.stop()
        if self.sink.disk_full and status in (ev.COMPLETED, ev.STOPPED):
            status = ev.DISK_FULL
            error = {"message": disk_full_message(self.sink.write_error, self._last_step), "traceback": []}
        elif self.sink.write_error is not None and status in (ev.COMPLETED, ev.STOPPED):  # EIO and the like
            status = ev.FAILED
            error = {"message": f"cannot write {EVENTS}: {short_reason(self.sink.write_error)}", "traceback": []}
        if main:
            release_reserve(self.run_dir)  # its room is for what follows: the last events and status.json
        fields: dict[str, Any] = {"status": status, "duration_s": round(now() - self.started_at, 3)}
        if trainer is not None and status in (ev.COMPLETED, ev.STOPPED, ev.DISK_FULL):
            if self.stop_requested == "early stopping":  # the best evaluation's adapter, not the last
                kept = self.best.restore(trainer.model, self._last_step, self.evals.best)
                if kept is not None:
                    self.say(kept)
                    fields["adapter_step"] = self.best.restored_step
            fields["adapter"] = self.folder.save_adapter(trainer, self.best.adapter_step(self._last_step))
        if self.stop_requested:
            fields["stopped_by"] = self.stop_requested
        if error:
            fields["error"] = error
        fields["step"] = self._last_step
        if self.folder.rescue is not None:
            fields["rescued_to"] = str(self.folder.rescue)
        self.sink.emit(ev.RUN_FINISHED, **fields)
        return self.folder.finish(EXIT_BY_STATUS[status], status, self._last_step)

    def _close_watch(self) -> None:
        """However training ended (also out of memory, an exception or a second Ctrl-C, where the
        Trainer's ``on_train_end`` never came): the spills CUPTI still held are emitted before
        ``run_finished``. Already done at a normal end; never raises over the real ending."""
        if self.watch is None:
            return
        try:
            self.watch.close(self._last_step)
        except Exception as exc:
            print(f"loratop trainer: could not read the last spill records: {exc}", file=sys.stderr)

    def setup(self) -> Any:
        """Load the model in 4 bits, attach LoRA, load the data and build the trainer."""
        from loratop.trainer.run_build import build

        built = build(
            self.config,
            self.rank,
            self.run_dir,
            self.sink.emit,
            self._sampler,
            self.gpu_memory,
            [_event_callback(self)],
        )
        self.watch, self._facts, self._eval_size = built.watch, built.facts, built.eval_size
        return built.trainer

    def gpu_memory(self, cuda: bool) -> Any:
        """The GPU this rank trains on, for the memory watch (``None`` on a CPU run)."""
        from loratop.trainer.memory_watch import CudaMemory

        return CudaMemory(self.rank.local_rank) if cuda else None

    def _distributed_args(self, cuda: bool) -> dict[str, Any]:
        """The Trainer's DDP/FSDP settings (:func:`~loratop.trainer.trainer_args.distributed_args`)."""
        return distributed_args(self.config, self.rank, cuda)

    def fit(self, trainer: Any) -> None:
        """Train, then evaluate once more if the last step had none (:meth:`execute` saves the
        adapter afterwards, also when stopped early)."""
        trainer.train()
        self._last_step = trainer.state.global_step
        cannot_write = self.stop_requested in CANNOT_WRITE
        if trainer.eval_dataset is not None and self.evals.last_step != self._last_step and not cannot_write:
            self.sink.emit(ev.LOG, message=f"evaluating at the last step ({self._last_step})")
            trainer.evaluate()

    def run_started_fields(self, max_steps: int) -> dict[str, Any]:
        """The ``run_started`` event: everything known once the model is ready."""
        return {
            "run_name": self.run_dir.name,
            "run_dir": str(self.run_dir),
            "pid": os.getpid(),
            "config": self.config.model_dump(mode="json"),
            "model": self._facts["model"],
            "device": self._facts["device"],
            "data": self._facts["data"],
            "max_steps": max_steps,
            "params": self._facts["params"],
            "versions": library_versions(),
        }

    # -- several ranks ------------------------------------------------------------

    def say(self, message: str) -> None:
        """A phase message: an event from rank 0, and a line in trainer.log from every rank
        of a run of several (so the log shows that all acted at the same step)."""
        self.sink.emit(ev.LOG, message=message)
        if self.rank.distributed:
            print(f"loratop rank {self.rank.rank}: {message}", flush=True)

    def rank_row(self) -> dict[str, Any]:
        """This rank's line in the ``ranks`` event (:func:`~loratop.trainer.memory_watch.rank_memory_row`)."""
        from loratop.trainer.memory_watch import rank_memory_row

        return rank_memory_row(self.rank, self._sampler.last, self._facts["device"].get("kind"), self.watch)

    def sync_ranks(self, step: int, control: Any) -> None:
        """At a step boundary, on every rank: any rank's stop or checkpoint request becomes
        every rank's, at this same step (:class:`~loratop.trainer.rank_meeting.RankMeeting`:
        about every :data:`SYNC_INTERVAL_S` and at every ``save_steps`` step)."""
        if not self.meeting.due(step):
            return
        if self.stop_requested is None and _agent_gone():
            # The agent was killed (kill -9 of the launcher's child): nothing passes signals
            # on or says how the run ended any more, so the ranks stop now, adapter saved.
            self.stop_requested = "torchrun agent gone"
        cannot_write = self.sink.write_error is not None
        agreed = self.meeting.meet(step, self.stop_requested, self.save_signals, cannot_write, self.rank_row())
        if agreed.stop is not None:
            self.stop_requested = self.stop_requested or agreed.stop
            self.agreed_stop = self.stop_requested
        self.save_requested = agreed.save
        self.agreed_no_save = agreed.no_save
        if agreed.no_save:
            control.should_save = False

    # -- the run as the callback's RunPolicy (trainer/callback.py) ------------------------

    def begin(self, args: Any, state: Any, model: Any, hooks: dict[str, Any]) -> tuple[RunSink, Any]:
        """Training begins: ``run_started``; the callback writes through this run's sink and watch."""
        self.sink.emit(ev.RUN_STARTED, **self.run_started_fields(state.max_steps))
        return self.sink, self.watch

    def stepped(self, step: int, loss: float | None) -> None:
        """A step's loss: kept for the next evaluation's overfitting check."""
        self._last_step = step
        self.evals.stepped(loss)

    def spiked(self, spike: Any, control: Any) -> None:
        self.on_spike(spike, control)

    def controls(self, state: Any, control: Any) -> None:
        """At a step boundary: stop or checkpoint, as signals, the dashboard and the ranks decided."""
        self._last_step = state.global_step
        if self.sink.write_error is not None:
            self._check_folder()  # the disk filled during this step: stop now, not within a second
            control.should_save = False  # no checkpoint onto a disk that refused a line
        if self.rank.distributed:
            # Ranks act only on what they agreed on: one rank stopping or saving alone
            # would leave the others waiting in a collective.
            self.sync_ranks(state.global_step, control)
            stop = self.agreed_stop
        else:
            stop = self.stop_requested
        if stop and not control.should_training_stop:
            control.should_training_stop = True
            self.say(f"{stop}: stopping after step {state.global_step}")
        if self.save_requested:
            self.save_requested = False
            if not control.should_save and self.sink.write_error is None and not self.agreed_no_save:
                control.should_save = True
                self.say(f"SIGUSR1: saving a checkpoint after step {state.global_step}")

    def evaluated(self, step: int, metrics: dict[str, Any], control: Any, hooks: dict[str, Any]) -> None:
        self.on_eval(step, metrics, control, hooks.get("model"))

    def ended(self, state: Any) -> None:
        """Nothing yet: :meth:`execute` writes ``run_finished`` once the adapter is saved."""

    def on_spike(self, spike: Any, control: Any) -> None:
        """Report a spike; on a severe or fatal one, do what ``monitor.on_spike`` says.

        Called from ``on_log``, before the Trainer checks ``should_save`` and
        ``should_training_stop`` for this step, so both act on the spike's own step.
        """
        action = self.config.monitor.on_spike
        acts = spike.severity in ("severe", "fatal") and action != "warn"
        self.sink.emit(ev.SPIKE, **spike.as_event(), action=action if acts else "warn")
        if not acts:
            return
        control.should_save = True
        if action == "stop" and self.stop_requested is None:
            self.stop_requested = "spike"
            control.should_training_stop = True
            self.sink.emit(ev.LOG, level="warning", message=f"{spike.severity} spike at step {spike.step}: stopping")

    def on_eval(self, step: int, metrics: dict[str, Any], control: Any, model: Any) -> None:
        """One evaluation: its event and the overfitting alert (:class:`EvalReporter`), a copy of
        the best adapter's weights to keep (with early stopping), and early stopping."""
        self.evals.report(step, metrics, *self._eval_size)
        if self.evals.is_best:
            self.best.keep(model, step)
        why = self.evals.should_stop()
        if why is not None and self.stop_requested is None:
            self.stop_requested = "early stopping"
            control.should_training_stop = True
            self.say(f"{why}: stopping after step {step}")


def _agent_gone() -> bool:
    """Whether the agent that started this rank has died (this rank was re-parented)."""
    agent = os.environ.get(AGENT_ENV)
    return agent is not None and agent.isdigit() and os.getppid() != int(agent)


def _event_callback(run: Run) -> Any:
    """The Trainer callback of loratop's own runs: the same :class:`LoratopCallback` a script
    adds (one code path for the step stream, spikes, checkpoints and the memory watch), given
    this run as its :class:`~loratop.trainer.callback.RunPolicy`: the run owns the sink, the
    detector and the watch, decides stops, checkpoints, what a spike does and what an
    evaluation leads to (early stopping), and writes how it ended."""
    from loratop.trainer.callback import LoratopCallback

    return LoratopCallback(policy=run)


class NullSink:
    """The event sink of ranks other than 0: they train, and report only through rank 0."""

    write_error: OSError | None = None
    disk_full = False
    indexed = False
    unwritten: list[bytes] = []  # noqa: RUF012 - never appended to

    def emit(self, type_: str, **fields: Any) -> None:
        pass

    def flush_unwritten(self) -> bool:
        return True

    def written_bytes(self) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _Tolerant:
    """``sys.stdout``/``sys.stderr`` that drop what cannot be written (ENOSPC on ``trainer.log``)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except OSError:
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def build_arg_parser(prog: str = "python -m loratop.trainer") -> argparse.ArgumentParser:
    """``python -m loratop.trainer`` arguments (the agent of a run of several ranks takes the same)."""
    parser = argparse.ArgumentParser(prog=prog, description="loratop's QLoRA training subprocess")
    parser.add_argument("config", help="YAML run config (usually the run folder's resolved config.yaml)")
    parser.add_argument("--run-dir", required=True, help="run folder: events.jsonl, status.json, adapters go here")
    parser.add_argument("--events-fd", type=int, default=None, help="write end of the watcher's pipe (inherited fd)")
    return parser


def load_run_config(path: str, run_dir: Path, who: str) -> RunConfig | None:
    """The run's config (its ``output_dir`` the run folder), or ``None`` after printing each
    problem as ``who: problem`` on stderr."""
    try:
        return load_config(path, {"output_dir": str(run_dir)}, check_files=False)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"{who}: {line}", file=sys.stderr)
        return None


def take_run_dir(run_dir: Path, config: RunConfig, who: str, *, hold: bool, write_config: bool) -> bool:
    """Make the run folder, hold its lock (``hold``: until this process ends, so a second
    trainer pointed here cannot interleave its events and checkpoints with ours) and write
    ``config.yaml`` if missing. Returns ``False`` after saying why on stderr."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if hold:
            hold_run_dir(run_dir)  # its fd stays open (and the lock held) until the process exits
            if (run_dir / EVENTS).is_file() and (run_dir / EVENTS).stat().st_size > 0:
                # A folder that holds a run (finished, or lost) is that run's record: training
                # again into it would mix two runs' events and overwrite its adapter.
                print(
                    f"{who}: {run_dir} already holds a run ({EVENTS} is not empty); not training into it:"
                    " give a new folder (loratop run makes one per run)",
                    file=sys.stderr,
                )
                return False
        if write_config and not (run_dir / CONFIG).exists():
            (run_dir / CONFIG).write_text(dump_config(config))
    except RunDirTaken as exc:
        print(f"{who}: {exc}; not writing into it", file=sys.stderr)
        return False
    except OSError as exc:
        print(f"{who}: cannot write {run_dir}: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point of the training subprocess. Returns the exit code."""
    args = build_arg_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    rank = rank_info()
    config = load_run_config(args.config, run_dir, "loratop trainer")
    if config is None:
        return EXIT_CONFIG
    # Under torchrun the agent holds the folder for its ranks, and only rank 0 writes it.
    hold = rank.is_main and not (rank.distributed and os.environ.get(AGENT_ENV))
    if not take_run_dir(run_dir, config, "loratop trainer", hold=hold, write_config=rank.is_main):
        return EXIT_CONFIG
    if args.events_fd is not None:
        try:
            os.fstat(args.events_fd)
        except OSError:
            print(f"loratop trainer: --events-fd {args.events_fd} is not an open file descriptor", file=sys.stderr)
            return EXIT_CONFIG
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A full disk must not turn a library's print into a crash: trainer.log may lose lines.
    sys.stdout, sys.stderr = _Tolerant(sys.stdout), _Tolerant(sys.stderr)
    sink: RunSink = EventSink(run_dir / EVENTS, args.events_fd) if rank.is_main else NullSink()
    run = Run(config, run_dir, sink, rank)
    run.install_signal_handlers()
    return run.execute()


__all__ = [
    "EXIT_BY_STATUS",
    "STOP_CODES",
    "STOP_REASONS",
    "SYNC_INTERVAL_S",
    "NullSink",
    "Run",
    "UserFacingError",
    "_refuse_padding_free",
    "build_arg_parser",
    "library_versions",
    "load_run_config",
    "main",
    "take_run_dir",
    "versions_line",
]
