"""A script's run: the :class:`~loratop.trainer.callback.RunPolicy` of a Hugging Face
``Trainer`` script that adds ``LoratopCallback()`` (loratop did not launch it).

It writes the run folder a launched run has — ``events.jsonl``, ``status.json`` with the
liveness proof (pid, host, boot, start time) — on the main process, and stands aside with one
line on stderr where the folder cannot be made: a watcher never ends someone's training. The
dashboard's stop and checkpoint requests come through a request file in the run folder
(:func:`core.run_dir.request_control`), read at step boundaries; ``handle_signals=True``
also stops on SIGTERM/SIGINT and checkpoints on SIGUSR1, where the script kept the default
handler. Under ``torchrun`` the ranks agree on both through :class:`RankMeeting`, the
protocol of a launched run's ranks, and rank 0 reports every rank's memory.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from loratop.core import events as ev
from loratop.core.distributed import rank_info
from loratop.core.run_dir import (
    EVENTS,
    RunDirError,
    claim_run_dir,
    hold_run_dir,
    make_reserve,
    process_identity,
    read_control,
    release_reserve,
    shrink_reserve,
    write_status,
)
from loratop.core.run_summary import settle_finished_run
from loratop.core.spikes import SpikeDetector
from loratop.trainer.eval_report import EvalReporter
from loratop.trainer.event_sink import BackgroundSink, EventSink, Sink
from loratop.trainer.memory_sampler import MemorySampler
from loratop.trainer.rank_meeting import RankMeeting
from loratop.trainer.script_facts import dataset_rows
from loratop.trainer.torch_facts import is_oom

CONTROL_CHECK_S = 0.2
"""Least time between two looks at the run folder's control requests (at step boundaries)."""

STOPPED_BY_DASHBOARD = "stop requested"


class ScriptRunPolicy:
    """What a script's run decides for itself (see the module docstring); the arguments are
    :class:`~loratop.trainer.callback.LoratopCallback`'s, and ``gpu_memory(args, cuda)``: what
    the memory watch reads of this process's GPU (``None`` on a CPU run)."""

    def __init__(
        self,
        run_dir: Path | None,
        runs_dir: Path,
        name: str | None,
        handle_signals: bool,
        spike_sensitivity: float,
        memory_sample_hz: float,
        gpu_memory: Callable[[Any, bool], Any],
    ) -> None:
        self._gpu_memory = gpu_memory
        self._run_dir_arg, self._runs_dir, self._name = run_dir, runs_dir, name
        self._handle_signals = handle_signals
        self._hz = memory_sample_hz
        self.spikes = SpikeDetector(sensitivity=spike_sensitivity)
        self.rank = rank_info()
        self.run_dir: Path | None = None
        """The run folder, once training began (on the main process)."""
        self.sink: BackgroundSink | None = None
        """The sink this run writes through and closes at the end (main process only)."""
        self.sampler: MemorySampler | None = None
        self.watch: Any = None
        self.device: dict[str, Any] = {}
        self.stop: str | None = None
        """Why the run stops (a signal's name, the dashboard's request), once asked."""
        self.saves_asked = 0
        """Checkpoints asked for so far (the dashboard's requests, SIGUSR1s); only grows."""
        self._saves_done = 0
        self._control_seen: dict[str, int] = {}
        self._control_checked = 0.0
        self._evals: EvalReporter | None = None
        self._meeting: RankMeeting | None = None
        self._started = 0.0
        self._last_step = 0
        self._finished = False
        self._watch_closed = False
        self._said_write_error = False
        self._installed: list[tuple[int, Any]] = []
        self._lock_fd: int | None = None

    def _folder(self, args: Any) -> Path:
        if self._run_dir_arg is not None:
            return self._run_dir_arg
        name = self._name or Path(str(getattr(args, "output_dir", "") or "hf-run")).name or "hf-run"
        return self._runs_dir / f"{name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"

    # -- the policy -----------------------------------------------------------------

    def begin(self, args: Any, state: Any, model: Any, hooks: dict[str, Any]) -> tuple[Sink | None, Any]:
        """Make the run folder and its first event (rank 0), or only sample memory (other
        ranks). A folder that cannot be made or written (a file in the way, a full or read-only
        disk) is said in one line on stderr, and the run goes on unwatched."""
        import torch

        from loratop.trainer.script_facts import start_script_run

        cuda = torch.cuda.is_available() and getattr(getattr(args, "device", None), "type", None) == "cuda"
        if not state.is_world_process_zero:
            # Another rank: it reports only through rank 0 (its memory row at the meetings).
            from loratop.trainer.torch_facts import device_info

            self.device = device_info(torch, cuda)
            self.sampler = MemorySampler(lambda *a, **k: None, self._hz)
            self.sampler.start()
            self._meeting = RankMeeting(self.rank, None, 1.0 / self._hz)
            return None, None
        folder = self._folder(args).resolve()
        self._started = time.time()
        try:
            self.run_dir = claim_run_dir(folder)
            # Held until the end, as a launched trainer holds its own: what proves to the
            # dashboard that a pid in status.json is this run's before it sends a signal.
            self._lock_fd = hold_run_dir(self.run_dir)
            write_status(
                self.run_dir,
                pid=os.getpid(),
                **process_identity(os.getpid()),
                state=ev.RUNNING,
                launched_at=self._started,
                started_at=self._started,
                ended_at=None,
                control="requests",
                source="LoratopCallback",
            )
            events = EventSink(self.run_dir / EVENTS)
        except (OSError, RunDirError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"loratop: not watching this run: {folder}: {why}", file=sys.stderr)
            self.run_dir = None
            self._meeting = RankMeeting(self.rank, None, 1.0 / self._hz)
            return None, None
        if self.install_signal_handlers():
            write_status(self.run_dir, control="signals")
        make_reserve(self.run_dir)  # room for the last words should the disk fill (see _end)
        # Written by a thread of its own: the script's steps never wait for the disk.
        self.sink = BackgroundSink(events)
        atexit.register(self.at_exit)
        self._evals = EvalReporter(self.sink)
        self._meeting = RankMeeting(self.rank, self.sink, 1.0 / self._hz)
        self.sampler, self.watch, self.device = start_script_run(
            self.sink, self.run_dir, self.rank, args, state, model, hooks, cuda, self._gpu_memory(args, cuda), self._hz
        )
        return self.sink, self.watch

    def stepped(self, step: int, loss: float | None) -> None:
        """A step's loss: kept for the next evaluation's overfitting check."""
        self._last_step = step
        if self._evals is not None:
            self._evals.stepped(loss)

    def spiked(self, spike: Any, control: Any) -> None:
        """A script's run only reports a spike: what to do about it is the script's."""
        if self.sink is not None:
            self.sink.emit(ev.SPIKE, **spike.as_event())

    def controls(self, state: Any, control: Any) -> None:
        """At a step boundary: the dashboard's requests (or signals), agreed between ranks."""
        step = self._last_step = state.global_step
        if self.sink is not None:
            self._read_requests()
            self._say_write_error(step)
        stop, save = self.stop, self.saves_asked > self._saves_done
        if self.rank.distributed:
            # Ranks act only on what they agreed on at a meeting: one rank stopping alone
            # would leave the others waiting in a collective.
            if self._meeting is None or not self._meeting.due(step):
                return
            agreed = self._meeting.meet(step, self.stop, self.saves_asked, False, self._row())
            stop, save = agreed.stop, agreed.save
            self.stop = self.stop or stop
        self._saves_done = self.saves_asked
        if stop and not control.should_training_stop:
            control.should_training_stop = True
            if self.sink is not None:
                self.sink.emit(ev.LOG, message=f"{stop}: stopping after step {step}")
        if save and not control.should_save:
            control.should_save = True
            if self.sink is not None:
                self.sink.emit(ev.LOG, message=f"checkpoint requested: saving after step {step}")

    def evaluated(self, step: int, metrics: dict[str, Any], control: Any, hooks: dict[str, Any]) -> None:
        """An evaluation: its event and the overfitting alert (a script's eval tokens are unknown)."""
        if self._evals is not None:
            self._evals.report(step, metrics, None, dataset_rows(hooks.get("eval_dataloader")))

    def ended(self, state: Any) -> None:
        """Training ended: ``run_finished`` and the final status (rank 0)."""
        self._last_step = state.global_step
        self._watch_closed = True  # the callback closed it at the end of training
        if self.sink is None:
            if self.sampler is not None:
                self.sampler.stop()  # another rank: nothing of its own to write
            return
        self._end(ev.STOPPED if self.stop else ev.COMPLETED)

    def _row(self) -> dict[str, Any]:
        """This rank's line in the ``ranks`` event, as a launched run's ranks report it."""
        from loratop.trainer.memory_watch import rank_memory_row

        sample = self.sampler.last if self.sampler is not None else None
        return rank_memory_row(self.rank, sample, self.device.get("kind"), self.watch)

    # -- control --------------------------------------------------------------------

    def _read_requests(self) -> None:
        """The dashboard's stop and checkpoint requests since the last look (a stat a step)."""
        current = time.monotonic()
        if current - self._control_checked < CONTROL_CHECK_S or self.run_dir is None:
            return
        self._control_checked = current
        counts = read_control(self.run_dir)
        if counts is None:
            return
        if counts.get("stop", 0) > self._control_seen.get("stop", 0) and self.stop is None:
            self.stop = STOPPED_BY_DASHBOARD
        if counts.get("checkpoint", 0) > self._control_seen.get("checkpoint", 0):
            self.saves_asked += 1
        self._control_seen = counts

    def _say_write_error(self, step: int) -> None:
        """Once, on the script's console, when the run folder stopped taking events: a watcher
        never stops someone's training for its own disk, but says what it can no longer do."""
        error = self.sink.write_error if self.sink is not None else None
        if error is None or self._said_write_error:
            return
        self._said_write_error = True
        why = "the disk is full" if self.sink is not None and self.sink.disk_full else (error.strerror or str(error))
        print(
            f"loratop: {self.run_dir}: {why} (at step {step}): events are kept in memory and written when"
            " room is made; training goes on",
            file=sys.stderr,
            flush=True,
        )

    def install_signal_handlers(self) -> bool:
        """Opt-in: SIGTERM/SIGINT stop, SIGUSR1 checkpoints, where the script kept the default.
        Returns whether SIGTERM and SIGUSR1 are both ours (then the dashboard may signal)."""
        if not self._handle_signals:
            return False
        import threading

        if threading.current_thread() is not threading.main_thread():
            return False
        ours = {signal.SIGTERM: self.on_stop, signal.SIGINT: self.on_stop, signal.SIGUSR1: self.on_save}
        defaults = {
            signal.SIGTERM: signal.SIG_DFL,
            signal.SIGINT: signal.default_int_handler,
            signal.SIGUSR1: signal.SIG_DFL,
        }
        for signum, handler in ours.items():
            current = signal.getsignal(signum)
            if current is defaults[signum] or current == signal.SIG_DFL:
                self._installed.append((signum, current))
                signal.signal(signum, handler)
        mine = {s for s, _ in self._installed}
        return signal.SIGTERM in mine and signal.SIGUSR1 in mine

    # Handlers only set flags: the main thread may be inside an emit.
    def on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stop is None:
            self.stop = signal.Signals(signum).name

    def on_save(self, signum: int, frame: FrameType | None) -> None:
        self.saves_asked += 1

    # -- the end --------------------------------------------------------------------

    def _end(self, status: str, error: dict[str, Any] | None = None) -> None:
        sink, run_dir = self.sink, self.run_dir
        if sink is None or run_dir is None or self._finished:
            return
        self._finished = True
        if self.watch is not None and not self._watch_closed:
            with contextlib.suppress(Exception):
                self.watch.close(self._last_step)  # the script died mid-run: no train end closed it
        if self.sampler is not None:
            self.sampler.stop()
        fields: dict[str, Any] = {"status": status, "duration_s": round(time.time() - self._started, 3)}
        fields["step"] = self._last_step
        fields["adapter"] = None  # the script saves its model itself
        if self.stop:
            fields["stopped_by"] = self.stop
        if error:
            fields["error"] = error
        sink.emit(ev.RUN_FINISHED, **fields)
        # What is still queued is written first, then status.json says it ended. After a full
        # disk the reserve set aside at the start gives its room back in two steps: most of it
        # for the events kept in memory, the rest for run_finished and status.json.
        sink.close(make_room=[lambda: shrink_reserve(run_dir, 64 << 10), lambda: release_reserve(run_dir)])
        release_reserve(run_dir)
        code = 0 if status in (ev.COMPLETED, ev.STOPPED) else 1
        final: dict[str, Any] = {"events_lost": sink.lost} if sink.lost else {}
        try:
            write_status(
                run_dir,
                state="finished",
                status=status,
                exit_code=code,
                last_step=self._last_step,
                ended_at=time.time(),
                **final,
            )
        except OSError as exc:
            print(f"loratop: cannot write {run_dir / 'status.json'}: {exc.strerror or exc}", file=sys.stderr)
        if sink.indexed and sink.queued == 0:
            with contextlib.suppress(OSError):
                settle_finished_run(run_dir)
        for signum, previous in self._installed:
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, previous)
        self._installed = []
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # the run is over: the folder's lock goes
            self._lock_fd = None

    def at_exit(self) -> None:
        """The script ended without the Trainer's ``on_train_end`` (an exception, ``sys.exit``):
        say how, so the run is ``failed`` rather than found ``lost`` later."""
        if self._finished:
            return
        exc = getattr(sys, "last_value", None)
        if exc is not None:
            status = ev.OOM if is_oom(exc) else ev.FAILED
            error = {"message": f"{type(exc).__name__}: {exc}".strip(), "traceback": []}
        else:
            status, error = ev.FAILED, {"message": "the script ended before training did", "traceback": []}
        self._end(status, error)


__all__ = ["CONTROL_CHECK_S", "STOPPED_BY_DASHBOARD", "ScriptRunPolicy"]
