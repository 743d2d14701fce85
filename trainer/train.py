"""The training subprocess: ``python -m loratop.trainer CONFIG --run-dir DIR [--events-fd N]``.

Reads top to bottom: :meth:`Run.setup` loads the 4-bit base, attaches LoRA, audits
what trains and builds the TRL trainer; :meth:`Run.fit` trains, reporting each
optimizer step through the event sink. Library output (transformers, TRL, datasets,
bitsandbytes all print) goes to this process's stdout/stderr, which the launcher
sends to ``trainer.log``; events go only to the sink.

Signals: SIGINT/SIGTERM stop at the next step boundary and save the adapter
(status ``stopped``); SIGUSR1 saves a checkpoint at the next step boundary and goes on.

Under torchrun (:mod:`trainer.agent` starts it) every rank runs this module. Rank 0
writes events, ``status.json`` and the adapter; the others write nothing. About every
0.2 s, at a step boundary, the ranks meet (:meth:`Run.sync_ranks`): whether a signal asked
to stop or checkpoint, so all ranks act at the same step, and now and then one row each
(memory, OOM level, spills) for rank 0 to report.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from loratop.core import events as ev
from loratop.core.distributed import AGENT_ENV, RankInfo, backend_for, rank_info, worst_rank
from loratop.core.oom_forecast import LEVELS as OOM_LEVELS
from loratop.core.overfit import OVERFITTING, EvalTracker
from loratop.core.run_dir import (
    ADAPTER,
    CONFIG,
    EVENTS,
    RESERVE_BYTES,
    STATUS,
    RunDirTaken,
    hold_run_dir,
    make_reserve,
    new_rescue_dir,
    now,
    process_identity,
    read_status,
    release_reserve,
    rescue_roots,
    write_status,
)
from loratop.core.run_summary import settle_finished_run
from loratop.core.spikes import SpikeDetector
from loratop.preflight.config import ConfigError, RunConfig, dump_config, load_config
from loratop.trainer.event_sink import DISK_FULL_ERRNOS, EventSink, RunSink
from loratop.trainer.memory_sampler import MemorySampler
from loratop.trainer.torch_facts import device_info, is_oom

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


class UserFacingError(Exception):
    """A failure the user can fix; its message is shown as is, without a traceback."""


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
        """The name of the signal that asked the run to stop, once one has."""
        self.save_requested = False
        self.save_signals = 0
        """SIGUSR1s received: under torchrun, each is one checkpoint, whichever rank got it first."""
        self._saves_done = 0
        self.started_at = now()
        self._audit: dict[str, Any] = {}
        self._model_info: dict[str, Any] = {}
        self._device: dict[str, Any] = {}
        self._data_info: dict[str, Any] = {}
        self._last_step = 0
        self.watch: Any = None
        """The run's MemoryWatch, once the trainer is built."""
        self._sampler = MemorySampler(sink.emit, config.monitor.memory_sample_hz)
        self.spikes = SpikeDetector(sensitivity=config.monitor.spike_sensitivity)
        """Fed every step's loss and grad norm (see :meth:`on_spike`)."""
        st = os.stat(run_dir)
        self._folder_id = (st.st_dev, st.st_ino)
        self._folder_watch = _Every(FOLDER_CHECK_S, self._check_folder, name="loratop-folder")
        self._rescue: Path | None = None
        """The rescue folder that took the adapter (its own folder was full or removed), if any."""
        self._ranks_sent = 0.0
        """When rank 0 last reported every rank's memory (monotonic seconds)."""
        self._ranks_seen: tuple[int, int] | None = None
        """The worst OOM level and the most spills over the ranks at the last report."""
        self._next_sync = 0
        """The step at which the ranks next meet (rank 0 names it at each meeting)."""
        self.agreed_stop: str | None = None
        """Several ranks: the stop every rank agreed on at the last meeting."""
        self.agreed_no_save = False
        """Several ranks: some rank cannot write (a full disk), so none checkpoints."""
        self._synced_at: tuple[float] | None = None
        self._synced_step = 0
        self.evals = EvalTracker(config.monitor.overfit_evals, config.training.early_stopping_patience)
        """Every evaluation so far: the best one, overfitting, early stopping."""
        self._train_losses: list[float] = []
        """Training losses since the last evaluation."""
        self._last_eval_step: int | None = None
        self._eval_tokens: int | None = None
        self._eval_rows = 0
        self._best_weights: dict[str, Any] | None = None
        self._best_step: int | None = None
        self._restored_step: int | None = None
        """The step of the weights put back before the final save (early stopping), if any."""

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
        if self.stop_requested is None:
            if self.sink.write_error is not None:
                self.stop_requested = "disk full" if self.sink.disk_full else "events.jsonl cannot be written"
            elif self.folder_problem() is not None:
                self.stop_requested = "run folder removed"

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
            # pid + host + boot + start time: what lets a watcher prove later that a live pid is
            # still this trainer before it signals it (a pid alone may have been reused). Under
            # torchrun the agent is what status.json names (it passes signals on to the ranks).
            if not self.rank.distributed:
                write_status(
                    self.run_dir,
                    pid=os.getpid(),
                    **process_identity(os.getpid()),
                    state=ev.RUNNING,
                    started_at=self.started_at,
                    ended_at=None,
                )
            elif main:
                write_status(self.run_dir, rank0_pid=os.getpid(), state=ev.RUNNING, started_at=self.started_at)
            if main and not make_reserve(self.run_dir):
                room = f"no room to set {RESERVE_BYTES >> 10} KiB aside in {self.run_dir}"
                self.sink.emit(ev.LOG, level="warning", message=f"{room}: a full disk may cut the last events")
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
            if _is_disk_full(exc):
                status, error = ev.DISK_FULL, {"message": _disk_full_message(exc, self._last_step), "traceback": []}
                print(f"loratop trainer: {error['message']}", file=sys.stderr)
                self._drop_torn_checkpoint()
            else:
                status = ev.OOM if is_oom(exc) else ev.FAILED
                lines = traceback.format_exception(exc)
                tail = "".join(lines).rstrip().splitlines()[-12:]
                error = {"message": f"{type(exc).__name__}: {exc}".strip(), "traceback": tail}
                if status == ev.OOM:
                    error.update(self._oom_post_mortem())
                traceback.print_exception(exc)  # the whole thing, into trainer.log
        finally:
            self._close_watch()
            self._sampler.stop()
            if main:
                self._folder_watch.stop()
        if self.sink.disk_full and status in (ev.COMPLETED, ev.STOPPED):
            status = ev.DISK_FULL
            error = {"message": _disk_full_message(self.sink.write_error, self._last_step), "traceback": []}
        elif self.sink.write_error is not None and status in (ev.COMPLETED, ev.STOPPED):  # EIO and the like
            status = ev.FAILED
            error = {"message": f"cannot write {EVENTS}: {_short_reason(self.sink.write_error)}", "traceback": []}
        if main:
            release_reserve(self.run_dir)  # its room is for what follows: the last events and status.json
        fields: dict[str, Any] = {"status": status, "duration_s": round(now() - self.started_at, 3)}
        if trainer is not None and status in (ev.COMPLETED, ev.STOPPED, ev.DISK_FULL):
            if self.stop_requested == "early stopping":
                self._restore_best(trainer)
                if self._restored_step is not None:
                    fields["adapter_step"] = self._restored_step
            fields["adapter"] = self._save_adapter(trainer)
        if self.stop_requested:
            fields["stopped_by"] = self.stop_requested
        if error:
            fields["error"] = error
        fields["step"] = self._last_step
        if self._rescue is not None:
            fields["rescued_to"] = str(self._rescue)
        self.sink.emit(ev.RUN_FINISHED, **fields)
        return self._finish(EXIT_BY_STATUS[status], status)

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

    def _finish(self, code: int, status: str) -> int:
        """The last writes: events kept in memory, status.json, and a copy of the run in its
        rescue folder when it has one. Each may fail (the disk is still full); none raises."""
        self.sink.flush_unwritten()
        if not self.rank.is_main:
            self.sink.close()
            return code
        final = {
            "state": "finished",
            "status": status,
            "exit_code": code,
            "last_step": self._last_step,
            "ended_at": now(),
        }
        if self.folder_problem() is None:
            try:
                write_status(self.run_dir, **final)
            except OSError as exc:
                print(f"loratop trainer: cannot write {self.run_dir / STATUS}: {exc.strerror or exc}", file=sys.stderr)
        if self._rescue is not None:
            try:
                (self._rescue / EVENTS).write_bytes(self.sink.written_bytes() + b"".join(self.sink.unwritten))
                (self._rescue / CONFIG).write_text(dump_config(self.config))
                recorded = read_status(self.run_dir) or {}
                write_status(self._rescue, **{**recorded, **final, "rescued_from": str(self.run_dir)})
            except OSError as exc:
                print(f"loratop trainer: cannot copy the run to {self._rescue}: {exc.strerror or exc}", file=sys.stderr)
        indexed = self.sink.indexed
        self.sink.close()
        if indexed and self.folder_problem() is None:
            # The run's summary for ls and the home screen, from the index: one small file each.
            with contextlib.suppress(OSError):
                settle_finished_run(self.run_dir)
        return code

    def _drop_torn_checkpoint(self) -> None:
        """The disk filled while a checkpoint was written: remove it (it cannot be resumed from,
        and looks as if it could), which also gives its room to the last writes."""
        torn = self.run_dir / f"checkpoint-{self._last_step}"
        if torn.is_dir() and not (torn / "trainer_state.json").exists():  # the Trainer writes it last
            shutil.rmtree(torn, ignore_errors=True)
            self.sink.emit(ev.LOG, level="warning", message=f"removed {torn}: the disk filled while it was written")

    def folder_problem(self) -> str | None:
        """Why the run folder can no longer be written as ours: removed (or replaced), or
        ``None`` while it is there."""
        try:
            st = os.stat(self.run_dir)
        except OSError:
            return "run folder removed"
        if (st.st_dev, st.st_ino) != self._folder_id or not (self.run_dir / EVENTS).exists():
            return "run folder removed"
        return None

    def _save_adapter(self, trainer: Any) -> str | None:
        """Save the final adapter where there is room: the run folder, else a rescue folder
        (:func:`rescue_roots`), saying where. Returns its path, or ``None`` if nowhere took it."""
        if self.config.distributed.strategy == "fsdp" and self.rank.distributed:
            return self._save_sharded_adapter(trainer)
        if not self.rank.is_main:
            return None  # DDP: every rank holds the same adapter; rank 0 saves it
        need = sum(p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad)
        places: list[Path] = []
        problem = self.folder_problem()
        if problem is None and (self.sink.write_error is None or _free(self.run_dir) > need + RESERVE_BYTES):
            places.append(self.run_dir)
        reasons = [] if problem is None else [f"{self.run_dir}: {problem}"]
        if self.sink.write_error is not None:
            reasons.append(f"{self.run_dir}: {self.sink.write_error.strerror or self.sink.write_error}")
        places += rescue_roots()
        for place in places:
            try:
                folder = place if place == self.run_dir else new_rescue_dir(place, self.run_dir.name)
                path = folder / ADAPTER
                try:
                    trainer.model.save_pretrained(str(path))
                except BaseException:
                    shutil.rmtree(path, ignore_errors=True)  # half an adapter is none
                    if folder != self.run_dir:
                        shutil.rmtree(folder, ignore_errors=True)
                    raise
            except Exception as exc:  # safetensors wraps its OSError; any failure means: try the next place
                reasons.append(f"{place}: {_short_reason(exc)}")
                continue
            if folder != self.run_dir:
                self._rescue = folder
                why = "; ".join(reasons)
                self.sink.emit(ev.LOG, level="warning", message=f"adapter saved to {path} instead ({why})")
                print(f"loratop trainer: adapter saved to {path} ({why})", file=sys.stderr)
            self.sink.emit(ev.CHECKPOINT, step=self._adapter_step(), path=str(path), final=True)
            return str(path)
        message = "the adapter could not be saved anywhere: " + "; ".join(reasons)
        self.sink.emit(ev.LOG, level="error", message=message)
        print(f"loratop trainer: {message}", file=sys.stderr)
        return None

    def _save_sharded_adapter(self, trainer: Any) -> str | None:
        """QLoRA-FSDP: the adapter is sharded, so every rank takes part in saving it (the
        Trainer gathers the full state dict to rank 0, which writes it)."""
        path = self.run_dir / ADAPTER
        trainer.save_model(str(path))  # FULL_STATE_DICT (see _distributed_args): one adapter file
        if self.rank.is_main:
            self.sink.emit(ev.CHECKPOINT, step=self._adapter_step(), path=str(path), final=True)
        return str(path)

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

        return rank_memory_row(self.rank, self._sampler.last, self._device.get("kind"), self.watch)

    def sync_ranks(self, step: int, control: Any) -> None:
        """At a step boundary, on every rank: any rank's stop or checkpoint request becomes
        every rank's, at this same step; and now and then rank 0 gathers every rank's row.

        The ranks meet about every :data:`SYNC_INTERVAL_S` (rank 0 names the next step to meet
        at, from the pace so far) and at every ``save_steps`` step, over one all_reduce of a
        few integers (the requests, the worst OOM level, the most spills, the next step). The
        rows themselves (a pickled dict each) are gathered only when rank 0 is due to report
        (every :data:`RANKS_REPORT_S`) or a level or spill count changed; every rank knows
        when from the same reduced integers. Every decision is made on all ranks alike.
        """
        import torch
        import torch.distributed as dist

        save_steps = self.config.training.save_steps
        if step < self._next_sync and not (save_steps and step % save_steps == 0):
            return
        current = time.monotonic()
        if self._synced_at is not None and step > self._synced_step:
            pace = (current - self._synced_at[0]) / (step - self._synced_step)  # seconds per step
            ahead = max(1, min(MAX_SYNC_GAP, int(SYNC_INTERVAL_S / pace) if pace > 0 else MAX_SYNC_GAP))
        else:
            ahead = 1
        self._synced_at, self._synced_step = (current,), step
        if self.stop_requested is None and self._agent_gone():
            # The agent was killed (kill -9 of the launcher's child): nothing passes signals
            # on or says how the run ended any more, so the ranks stop now, adapter saved.
            self.stop_requested = "torchrun agent gone"
        row = self.rank_row()
        code = STOP_CODES.get(self.stop_requested, len(STOP_REASONS)) if self.stop_requested else 0
        every = max(RANKS_REPORT_S, 1.0 / self.config.monitor.memory_sample_hz)
        due = self.rank.is_main and time.monotonic() - self._ranks_sent >= every
        level = OOM_LEVELS.index(row["oom_level"]) + 1 if row["oom_level"] in OOM_LEVELS else 0
        mine = [code, self.save_signals, int(self.sink.write_error is not None), int(due), level, row["spills"] or 0]
        mine.append(step + ahead if self.rank.is_main else 0)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        flags = torch.tensor(mine, dtype=torch.int64, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop, saves, no_save, due_any, worst_level, most_spills, self._next_sync = (int(x) for x in flags.tolist())
        if stop:
            if self.stop_requested is None:
                self.stop_requested = STOP_REASONS[stop - 1] if stop <= len(STOP_REASONS) else "stop on another rank"
            self.agreed_stop = self.stop_requested
        # The agent passes a SIGUSR1 to every rank, and each may get it a step apart: one
        # checkpoint per signal, at the first step boundary where any rank has it.
        self.save_requested = saves > self._saves_done
        self._saves_done = saves
        self.agreed_no_save = bool(no_save)
        if no_save:
            control.should_save = False
        changed = (worst_level, most_spills) != self._ranks_seen
        if not (due_any or changed):
            return
        self._ranks_seen = (worst_level, most_spills)
        gathered: list[Any] = [None] * self.rank.world_size
        dist.all_gather_object(gathered, row)
        if self.rank.is_main:
            self._ranks_sent = time.monotonic()
            rows = [g for g in gathered if g]
            self.sink.emit(ev.RANKS, step=step, world_size=self.rank.world_size, ranks=rows, worst=worst_rank(rows))

    def _agent_gone(self) -> bool:
        """Whether the agent that started this rank has died (this rank was re-parented)."""
        agent = os.environ.get(AGENT_ENV)
        return agent is not None and agent.isdigit() and os.getppid() != int(agent)

    # -- the run as the callback's RunPolicy (trainer/callback.py) ------------------------

    def begin(self, state: Any) -> tuple[RunSink, Any]:
        """Training begins: ``run_started``; the callback writes through this run's sink and watch."""
        self.sink.emit(ev.RUN_STARTED, **self.run_started_fields(state.max_steps))
        return self.sink, self.watch

    def stepped(self, step: int, loss: float | None) -> None:
        """A step's loss: kept for the next evaluation's overfitting check."""
        self._last_step = step
        if loss is not None:
            self._train_losses.append(loss)

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

    def evaluated(self, step: int, metrics: dict[str, Any], control: Any, model: Any) -> None:
        self.on_eval(step, metrics, control, model)

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

    def _oom_post_mortem(self) -> dict[str, Any]:
        """What was going on when memory ran out, and what to try."""
        from loratop.core.oom_forecast import OOM_SUGGESTIONS

        return {
            "step": self._last_step,
            "batch_tokens": self.watch.recorder.last_tokens if self.watch else None,
            "last_memory": self._sampler.last,
            "suggestions": list(OOM_SUGGESTIONS),
        }

    def setup(self) -> Any:
        """Load the model in 4 bits, attach LoRA, load the data and build the trainer."""
        cfg = self.config
        self.sink.emit(ev.LOG, message="importing torch, transformers, peft, trl")
        import torch
        import transformers
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        # The start banner names the libraries (a bug report or a slow run needs them first),
        # in trainer.log too: the log a user attaches to an issue.
        banner = versions_line(library_versions())
        self.sink.emit(ev.LOG, message=banner)
        if self.rank.is_main:
            print(f"loratop: {banner}", flush=True)

        from loratop.trainer.load_progress import reporting_load_progress

        cuda = torch.cuda.is_available()
        if cuda and self.rank.distributed:
            torch.cuda.set_device(self.rank.local_rank)
        self._device = device_info(torch, cuda)
        if self.rank.distributed:
            self._device["rank"] = self.rank.rank
            self._device["world_size"] = self.rank.world_size
        if cuda:
            from loratop.trainer.memory_watch import cuda_figures

            self._sampler.torch_stats = cuda_figures
        path = cfg.model.name_or_path
        if path == "tiny":
            from loratop.trainer.tiny_model import tiny_model_dir

            self.sink.emit(ev.LOG, message="preparing the embedded tiny model")
            folder, built = tiny_model_dir()
            self.sink.emit(ev.LOG, message=("built" if built else "cached") + f" tiny model at {folder}")
            path = str(folder)
        # Seeded after the tiny model is built: building it draws random numbers, so seeding
        # before made the first run on a fresh cache start its adapters unlike every later one.
        transformers.set_seed(cfg.training.seed)

        compute_dtype = getattr(torch, cfg.quantization.bnb_4bit_compute_dtype)
        if compute_dtype == torch.float16 and not cuda:
            raise UserFacingError("quantization.bnb_4bit_compute_dtype = 'float16' needs a GPU; use bfloat16 on CPU")
        if compute_dtype == torch.bfloat16 and cuda and not torch.cuda.is_bf16_supported():
            raise UserFacingError(
                "quantization.bnb_4bit_compute_dtype = 'bfloat16' is not supported on this GPU; use float16"
            )

        self.sink.emit(ev.LOG, message=f"loading {cfg.model.name_or_path}")
        name = cfg.model.name_or_path

        def loading(line: str) -> None:  # a download or weight-loading bar moved on
            self.sink.emit(ev.LOG, message=f"loading {name}: {line}")

        with reporting_load_progress(loading) as bar:
            tokenizer, model = self._load_model(path, compute_dtype, cuda, bar)
        self._model_info = _model_info(model, cfg)
        if not cuda:
            _keep_cpu_weights_unpacked(model)

        gc = cfg.training.gradient_checkpointing
        if cfg.quantization.load_in_4bit:
            # Casts norms to fp32 and makes inputs require grad, so checkpointing works
            # through a frozen 4-bit base.
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        elif gc:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()

        targets: list[str] | str = cfg.lora.target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.lora_alpha,  # type: ignore[arg-type]  # peft's hint says int; floats work
            lora_dropout=cfg.lora.lora_dropout,
            target_modules=targets,
            bias=cfg.lora.bias,
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lora)  # a PeftModel wraps the base
        except ValueError as exc:
            if "not found in the base model" in str(exc) or "Target module" in str(exc):
                raise UserFacingError(f"lora.target_modules = {cfg.lora.target_modules}: {exc}") from None
            raise

        dataset, eval_set = self._load_dataset()
        trainer = self._build_trainer(model, tokenizer, dataset, cuda, eval_set)
        self._audit_or_refuse(trainer.model)
        self._watch_memory(trainer, cuda)
        return trainer

    def _load_model(self, path: str, compute_dtype: Any, cuda: bool, bar: type) -> tuple[Any, Any]:
        """The tokenizer and the (4-bit) base model; ``bar`` reports the hub's download bars."""
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        cfg = self.config
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        quantization = None
        fsdp = cfg.distributed.strategy == "fsdp" and self.rank.distributed
        if cfg.quantization.load_in_4bit:
            quantization = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=cfg.quantization.bnb_4bit_quant_type,
                bnb_4bit_use_double_quant=cfg.quantization.bnb_4bit_use_double_quant,
                bnb_4bit_compute_dtype=compute_dtype,
                # FSDP shards parameters of one dtype: the packed 4-bit weights must be stored
                # in the compute dtype, not uint8, to be sharded with the rest.
                **({"bnb_4bit_quant_storage": compute_dtype} if fsdp else {}),
            )
        # DDP: each rank loads the whole 4-bit base onto its own GPU. FSDP: no device map;
        # the base is sharded across the GPUs once the Trainer wraps it.
        device_map = None if fsdp or not cuda else {"": self.rank.local_rank}
        model = AutoModelForCausalLM.from_pretrained(
            path,
            quantization_config=quantization,
            dtype=compute_dtype,
            device_map=device_map,
            trust_remote_code=cfg.model.trust_remote_code,
            tqdm_class=bar,  # the hub's download bars, reported as phase messages
        )
        return tokenizer, model

    def _watch_memory(self, trainer: Any, cuda: bool) -> None:
        """Record batch sizes and prepare the OOM forecast from the tokenised lengths."""
        from loratop.core.oom_forecast import worst_batch_tokens
        from loratop.trainer.memory_watch import BatchRecorder, MemoryWatch

        t = self.config.training
        recorder = BatchRecorder()
        recorder.attach(trainer.model)  # the batch the model runs, not the one collated ahead
        lengths: list[int] = []
        if "input_ids" in getattr(trainer.train_dataset, "column_names", []):
            lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
        worst = worst_batch_tokens(lengths, t.per_device_train_batch_size, t.max_seq_length)
        self._data_info["longest_tokens"] = min(max(lengths), t.max_seq_length) if lengths else None
        self._data_info["worst_batch_tokens"] = worst
        self.watch = MemoryWatch(
            self.sink.emit,
            self._sampler,
            recorder,
            self.gpu_memory(cuda),
            worst,
            t.per_device_train_batch_size,
            paged_optimizer=t.optim.startswith("paged_"),
            knobs=t.model_dump(),
        )

    def gpu_memory(self, cuda: bool) -> Any:
        """The GPU this rank trains on, for the memory watch (``None`` on a CPU run)."""
        from loratop.trainer.memory_watch import CudaMemory

        return CudaMemory(self.rank.local_rank) if cuda else None

    def _load_dataset(self) -> tuple[Any, Any]:
        """The training rows and the eval rows (``None`` without ``data.eval_split`` / ``eval_path``)."""
        cfg = self.config.data
        self.sink.emit(ev.LOG, message=f"loading data from {cfg.path}")
        dataset, fmt, source = self._read_rows("data.path", cfg.path, cfg.format, cfg.split, cfg.max_rows)
        eval_set = None
        if cfg.eval_split is not None:
            from loratop.preflight.data_files import held_out_rows

            size: float | int = cfg.eval_split if cfg.eval_split < 1 else int(cfg.eval_split)
            held = held_out_rows(cfg.eval_split, len(dataset))
            if held < 1 or held >= len(dataset):
                raise UserFacingError(
                    f"data.eval_split = {cfg.eval_split:g}: holds out {held} of {len(dataset)} rows; "
                    "at least 1 must be held out and 1 left to train on"
                )
            # The run's seed picks the rows: the same split on every run with that seed.
            parts = dataset.train_test_split(test_size=size, seed=self.config.training.seed, shuffle=True)
            dataset, eval_set = parts["train"], parts["test"]
        elif cfg.eval_path is not None:
            self.sink.emit(ev.LOG, message=f"loading eval data from {cfg.eval_path}")
            eval_set, eval_fmt, _ = self._read_rows("data.eval_path", cfg.eval_path, cfg.format, cfg.split, None)
            if eval_fmt != fmt:
                raise UserFacingError(
                    f"data.eval_path = {cfg.eval_path!r}: its rows are {eval_fmt}, the training rows {fmt}; "
                    "both must have one format"
                )
        self._data_info = {"path": cfg.path, "source": source, "rows": len(dataset), "format": fmt}
        if eval_set is not None:
            self._data_info["eval_rows"] = len(eval_set)
        return dataset, eval_set

    def _read_rows(self, key: str, path: str, format: str, split: str, max_rows: int | None) -> tuple[Any, Any, str]:
        """One data source as a ``datasets.Dataset``, its row format and where it came from."""
        from datasets import Dataset, load_dataset

        from loratop.preflight.data_files import DataProblem, inspect_data, load_rows

        try:
            info = inspect_data(path, format)
        except DataProblem as exc:
            raise UserFacingError(f"{key} = {path!r}: {exc}") from None
        if info.file is not None:
            rows = load_rows(info.file)
            if max_rows:
                rows = rows[:max_rows]
            fmt = info.format
            columns = {"messages": ["messages"], "prompt_completion": ["prompt", "completion"], "text": ["text"]}
            keep = columns[fmt or "text"]
            return Dataset.from_list([{k: row[k] for k in keep} for row in rows]), fmt, info.source
        dataset = load_dataset(path, split=split)
        if max_rows:
            dataset = dataset.select(range(min(max_rows, len(dataset))))
        return dataset, format, info.source

    def _build_trainer(self, model: Any, tokenizer: Any, dataset: Any, cuda: bool, eval_set: Any = None) -> Any:
        import dataclasses

        from trl import SFTConfig, SFTTrainer

        cfg = self.config
        t = cfg.training
        dtype = cfg.quantization.bnb_4bit_compute_dtype
        warmup: float | int = t.warmup_steps if t.warmup_steps < 1 else int(t.warmup_steps)
        if t.padding_free or t.packing:
            _refuse_padding_free(model, "training.packing" if t.packing else "training.padding_free")
        kernels = _sdpa_callbacks(t.sdpa_backend, cuda)
        args = SFTConfig(
            output_dir=str(self.run_dir),
            learning_rate=t.learning_rate,
            lr_scheduler_type=t.lr_scheduler_type,
            warmup_steps=warmup,
            max_steps=t.max_steps,
            num_train_epochs=t.num_train_epochs,
            per_device_train_batch_size=t.per_device_train_batch_size,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            max_length=t.max_seq_length,
            optim=t.optim,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            gradient_checkpointing=t.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            seed=t.seed,
            bf16=dtype == "bfloat16",
            fp16=dtype == "float16",
            use_cpu=not cuda,
            # Every step is logged so each step's own loss reaches us (not a window
            # average), and NaN/Inf are not filtered: a NaN loss must show.
            logging_steps=1,
            logging_nan_inf_filter=False,
            include_num_input_tokens_seen="non_padding",
            save_strategy="steps" if t.save_steps else "no",
            save_steps=t.save_steps or 500,
            eval_strategy="steps" if eval_set is not None and t.eval_steps else "no",
            eval_steps=t.eval_steps or None,
            per_device_eval_batch_size=t.per_device_train_batch_size,
            prediction_loss_only=True,
            report_to=[],
            disable_tqdm=True,
            # Speed knobs (issue 25); each default is what the run did before they existed.
            pad_to_multiple_of=t.pad_to_multiple_of,
            train_sampling_strategy="group_by_length" if t.group_by_length else "random",
            # Best-fit packing keeps rows whole (one too long is truncated, as unpacked) and makes
            # TRL's collator padding-free, so rows never attend to each other.
            packing=t.packing,
            packing_strategy="bfd",
            # The eval rows stay unpacked: the eval loss is comparable with runs that do not pack.
            eval_packing=False,
            dataloader_num_workers=t.dataloader_num_workers,
            dataloader_pin_memory=t.dataloader_pin_memory,  # use_cpu turns it off on a CPU run
            **self._distributed_args(cuda),
        )
        self.sink.emit(ev.LOG, message=f"tokenising {len(dataset)} rows")
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            eval_dataset=eval_set,
            processing_class=tokenizer,
            callbacks=[_event_callback(self), *kernels],
        )
        if t.padding_free and not t.packing:
            # TRL refuses padding_free with max_length set (it would stop truncating rows), so TRL
            # prepares and truncates the rows as usual and the collator alone flattens each batch.
            collator: Any = trainer.data_collator  # TRL's DataCollatorForLanguageModeling, a dataclass
            trainer.data_collator = dataclasses.replace(collator, padding_free=True)
        if eval_set is not None:
            tokenised: Any = trainer.eval_dataset
            ids = tokenised["input_ids"] if "input_ids" in tokenised.column_names else []
            self._eval_tokens = sum(min(len(row), t.max_seq_length) for row in ids) if len(ids) else None
            self._eval_rows = len(tokenised)
        return trainer

    def _distributed_args(self, cuda: bool) -> dict[str, Any]:
        """The Trainer's DDP/FSDP settings; nothing for a single process."""
        if not self.rank.distributed:
            return {}
        d = self.config.distributed
        args: dict[str, Any] = {
            "ddp_backend": backend_for(d.backend, cuda),
            # A dead peer fails a collective within this, not torch's default 30 minutes.
            "ddp_timeout": d.timeout_s,
            "ddp_find_unused_parameters": False,
        }
        if d.strategy == "fsdp":
            # FSDP2 (transformers' default): each decoder layer its own shard unit (the wrap
            # policy falls back to the model's _no_split_modules), parameters resharded after
            # the forward pass, rank 0 loading the checkpoint and broadcasting it, and the
            # adapter saved as one ordinary file.
            args["fsdp"] = True
            args["fsdp_config"] = {
                "version": 2,
                "reshard_after_forward": True,
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "cpu_ram_efficient_loading": True,
                "state_dict_type": "FULL_STATE_DICT",
            }
        return args

    def _audit_or_refuse(self, model: Any) -> None:
        from loratop.trainer.audit import audit_parameters

        audit = audit_parameters(model, train_biases=self.config.lora.bias != "none")
        self._audit = audit.as_event()
        if audit.lora_b_nonzero:
            self.sink.emit(
                ev.LOG,
                level="warning",
                message=f"{len(audit.lora_b_nonzero)} lora_B tensor(s) do not start at zero: "
                + ", ".join(audit.lora_b_nonzero[:4]),
            )
        if audit.unexpected:
            self.sink.emit(ev.LOG, level="error", message=audit.refusal())
            if not self.config.lora.allow_trainable_base:
                raise UserFacingError(audit.refusal())

    def fit(self, trainer: Any) -> None:
        """Train, then evaluate once more if the last step had none (:meth:`execute` saves the
        adapter afterwards, also when stopped early)."""
        trainer.train()
        self._last_step = trainer.state.global_step
        cannot_write = self.stop_requested in ("disk full", "events.jsonl cannot be written", "run folder removed")
        if trainer.eval_dataset is not None and self._last_eval_step != self._last_step and not cannot_write:
            self.sink.emit(ev.LOG, message=f"evaluating at the last step ({self._last_step})")
            trainer.evaluate()

    # -- held-out loss ------------------------------------------------------------

    def on_eval(self, step: int, metrics: dict[str, Any], control: Any, model: Any) -> None:
        """One evaluation: its event, an overfitting alert when it starts, early stopping, and
        (with early stopping) a copy of the best adapter's weights to keep."""
        loss = _float_or_none(metrics.get("eval_loss"))
        self._last_eval_step = step
        losses = [x for x in self._train_losses if math.isfinite(x)]
        self._train_losses = []
        tracker = self.evals
        tracker.add(step, loss if loss is not None else math.nan, sum(losses) / len(losses) if losses else None)
        best = tracker.best
        self.sink.emit(
            ev.EVAL,
            step=step,
            eval_loss=loss,
            eval_tokens=self._eval_tokens,
            eval_rows=self._eval_rows,
            duration_s=_float_or_none(metrics.get("eval_runtime")),
            best_loss=best.eval_loss if best else None,
            best_step=best.step if best else None,
        )
        if tracker.is_best and self.config.training.early_stopping_patience is not None:
            self._keep_best(model, step)
        message = tracker.overfitting()
        if message is not None:
            self.sink.emit(ev.ALERT, kind=OVERFITTING, step=step, message=message)
        why = tracker.should_stop()
        if why is not None and self.stop_requested is None:
            self.stop_requested = "early stopping"
            control.should_training_stop = True
            self.say(f"{why}: stopping after step {step}")

    def _keep_best(self, model: Any, step: int) -> None:
        """Copy the adapter's weights of the best evaluation to host memory (a LoRA adapter is
        small), to save them as the run's adapter if training goes on past its best."""
        if (self.config.distributed.strategy == "fsdp" and self.rank.distributed) or not self.rank.is_main:
            return  # sharded weights: the last adapter is saved (README); DDP: rank 0 saves
        self._best_weights = {
            name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad
        }
        self._best_step = step

    def _adapter_step(self) -> int:
        """The step whose weights the final adapter holds: the last, or the best evaluation's
        when early stopping kept that one."""
        return self._restored_step if self._restored_step is not None else self._last_step

    def _restore_best(self, trainer: Any) -> None:
        """Before the final save of an early-stopped run: the best evaluation's adapter."""
        if self._best_weights is None or self._best_step in (None, self._last_step):
            return
        import torch

        with torch.no_grad():
            for name, p in trainer.model.named_parameters():
                if name in self._best_weights:
                    p.copy_(self._best_weights[name].to(p.device))
        self._restored_step = self._best_step
        best = self.evals.best
        self.say(
            f"keeping the adapter of the best evaluation (step {self._best_step}, eval loss "
            f"{best.eval_loss:.4f}), not of the last step ({self._last_step})"
            if best
            else f"keeping the adapter of step {self._best_step}"
        )

    def run_started_fields(self, max_steps: int) -> dict[str, Any]:
        """The ``run_started`` event: everything known once the model is ready."""
        cfg = self.config
        return {
            "run_name": self.run_dir.name,
            "run_dir": str(self.run_dir),
            "pid": os.getpid(),
            "config": cfg.model_dump(mode="json"),
            "model": self._model_info,
            "device": self._device,
            "data": self._data_info,
            "max_steps": max_steps,
            "params": self._audit,
            "versions": library_versions(),
        }


LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "trl")
"""The libraries a run's versions name, besides Python."""


def library_versions() -> dict[str, str]:
    """Python's version and each of :data:`LIBRARIES`' installed versions (from their package
    metadata: nothing is imported), ``not installed`` for one that is missing."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def versions_line(versions: dict[str, str]) -> str:
    """``torch 2.5.1 · transformers 4.57.1 · … · Python 3.11.9``: the start banner's line."""
    libraries = " · ".join(f"{name} {v}" for name, v in versions.items() if name != "python")
    return f"{libraries} · Python {versions.get('python', '?')}"


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _keep_cpu_weights_unpacked(model: Any) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit layer's weights for its
    CPU kernel the first time the layer runs in eval mode without gradients — the first
    evaluation — and the training steps after it then get wrong gradients through the frozen
    base, silently (a run evaluating at step 3 parted from the same run without after step 3).
    Turn the repacking off for loratop's own CPU runs (a GPU run never repacks)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _event_callback(run: Run) -> Any:
    """The Trainer callback of loratop's own runs: the same :class:`LoratopCallback` a script
    adds (one code path for the step stream, spikes, checkpoints and the memory watch), given
    this run as its :class:`~loratop.trainer.callback.RunPolicy`: the run owns the sink, the
    detector and the watch, decides stops, checkpoints, what a spike does and what an
    evaluation leads to (early stopping), and writes how it ended."""
    from loratop.trainer.callback import LoratopCallback

    return LoratopCallback(policy=run)


PADDING_FREE_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
"""Attention implementations that keep the rows of a flattened (padding-free) batch apart by
their position ids: transformers' masks for sdpa, eager and flex attention, the varlen kernels
of flash attention."""

SDPA_KERNELS = {
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}
"""``training.sdpa_backend`` → torch's ``SDPBackend`` member."""


def _refuse_padding_free(model: Any, knob: str) -> None:
    """``training.padding_free`` and ``training.packing`` flatten a batch into one row: refuse a
    model whose attention might let its rows see each other (the loss would be wrong, silently)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    attention = getattr(base.config, "_attn_implementation", None)
    if not type(base).__module__.startswith("transformers."):
        why = f"{name} runs the model's own code (trust_remote_code), which may not keep packed rows apart"
    elif attention not in PADDING_FREE_ATTENTION:
        needs = ", ".join(PADDING_FREE_ATTENTION)
        why = f"{name}'s attention {attention!r} cannot keep packed rows apart; it needs {needs}"
    else:
        return
    raise UserFacingError(f"{knob} = true: {why}; accepted for this model: false")


def _sdpa_gpu_problem(backend: str, torch: Any) -> str | None:
    """Why ``training.sdpa_backend`` cannot run on this process's GPU, or ``None``."""
    major, minor = torch.cuda.get_device_capability()
    gpu = f"the {torch.cuda.get_device_name()} (sm{major}{minor})"
    instead = "accepted here: auto, efficient, math"
    if backend in ("flash", "cudnn") and major < 8:
        return f"training.sdpa_backend = {backend!r}: needs an Ampere or later GPU (sm80+), not {gpu}; {instead}"
    if backend == "flash" and not torch.backends.cuda.is_flash_attention_available():
        return f"training.sdpa_backend = 'flash': this PyTorch build has no flash attention kernel; {instead}"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if backend == "cudnn" and (cudnn is None or cudnn < 90000):
        has = cudnn or "none"
        return f"training.sdpa_backend = 'cudnn': needs cuDNN 9 or later (this PyTorch has {has}); {instead}"
    return None


def _sdpa_callbacks(backend: str, cuda: bool) -> list[Any]:
    """The Trainer callback that holds ``training.sdpa_backend``'s kernel order from the start of
    training to its end (evaluations during training included); none for ``auto``.

    The named kernel comes first; where it cannot run a call (flash takes no padding mask), the
    others follow in PyTorch's order, never cuDNN unless named: its per-shape graphs are what
    the other choices avoid. ``math`` runs alone. The flags are PyTorch's global ones, so the
    backward pass and gradient checkpointing's recomputation run under them too.
    """
    if backend == "auto":
        return []
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import TrainerCallback

    from loratop.preflight.config import sdpa_cpu_problem

    problem = _sdpa_gpu_problem(backend, torch) if cuda else sdpa_cpu_problem(backend)
    if problem is not None:
        raise UserFacingError(problem)
    first = getattr(SDPBackend, SDPA_KERNELS[backend])
    others = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    order = [first] if first == SDPBackend.MATH else [first, *(k for k in others if k != first)]

    class SdpaPreference(TrainerCallback):
        def __init__(self) -> None:
            self.held: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.held = sdpa_kernel(order, set_priority=True)
            self.held.__enter__()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.held is not None:  # restores PyTorch's own order (the process may train again)
                self.held.__exit__(None, None, None)
                self.held = None

    return [SdpaPreference()]


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


STOP_REASONS = (
    "SIGTERM", "SIGINT", "spike", "disk full", "events.jsonl cannot be written", "run folder removed",
    "torchrun agent gone", "early stopping",
)  # fmt: skip
"""Why a run stops, as the ranks tell each other (a code each: its place here, plus 1)."""
STOP_CODES = {reason: i + 1 for i, reason in enumerate(STOP_REASONS)}
SYNC_INTERVAL_S = 0.2
"""How often, at most, the ranks of a run meet to agree on stops and checkpoints: a stop
lands within this (plus a step) of the signal, on the same step everywhere."""
MAX_SYNC_GAP = 1000
RANKS_REPORT_S = 2.0
"""Rank 0 reports every rank's row at most this often (at once when a level or a spill count
changes): 8 ranks' rows are ~2 KB, so a six-hour run adds ~20 MB to events.jsonl, not 90."""


FOLDER_CHECK_S = 1.0
"""How often the run checks, between steps, that its folder is still there and writable."""


class _Every:
    """Calls ``fn`` every ``interval`` seconds on a daemon thread until :meth:`stop`."""

    def __init__(self, interval: float, fn: Any, name: str) -> None:
        self._interval, self._fn = interval, fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._fn()


def _is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) says the disk or the quota is full."""
    for _ in range(16):  # a chain of causes, never a cycle
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True  # safetensors and others wrap the OSError in their own error
        exc = exc.__cause__ or exc.__context__
    return False


def _disk_full_message(exc: BaseException | None, step: int) -> str:
    return f"disk full at step {step}: {_short_reason(exc) if exc else 'No space left on device'}"


def _short_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def _free(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _model_info(model: Any, cfg: RunConfig) -> dict[str, Any]:
    config = model.config
    linear4bit = 0
    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            linear4bit += 1
    return {
        "name_or_path": cfg.model.name_or_path,
        "model_type": getattr(config, "model_type", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "quantized_linear_layers": linear4bit,
        "load_in_4bit": cfg.quantization.load_in_4bit,
        "quant_type": cfg.quantization.bnb_4bit_quant_type if cfg.quantization.load_in_4bit else None,
    }


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


__all__ = ["Run", "main"]
