"""``LoratopCallback``: any Hugging Face ``Trainer`` script in loratop's dashboard.

    from loratop import LoratopCallback
    trainer = Trainer(..., callbacks=[LoratopCallback()])   # or SFTTrainer, or add_callback

The callback writes the same run folder a launched run has — ``events.jsonl``,
``status.json`` with the liveness proof (pid, host, boot, start time) — into
``runs/<output_dir's name>-<date>-<time>`` or the folder it is given, so ``loratop attach``,
``ls``, the home screen, compare and export work on the script's run unchanged. What it
reports: every logged step (loss, learning rate, grad norm, tokens, step time) and the
spike detector's flags on it, memory (NVML per GPU, else the host's RSS) on its own
thread, the trainable-parameter audit, the paged optimizer's state and spills, evals,
checkpoints, and how the run ended. What it cannot know (the script's data source, the
quantization of a model loaded without bitsandbytes) is left out, and shows as ``–``.

Control from the dashboard (``s`` stop, ``c`` checkpoint) reaches the script through a
request file in the run folder (:func:`core.run_dir.request_control`), read at step
boundaries, so nothing is installed in the script's process. ``handle_signals=True`` also
stops on SIGTERM/SIGINT and checkpoints on SIGUSR1, for ``kill`` from a shell; a handler
the script set is never replaced.

Under ``torchrun`` only the main process (``state.is_world_process_zero``) writes; every
:data:`RANKS_EVERY_STEPS` steps the ranks meet (one ``all_gather_object``), rank 0 reports
each rank's memory as a ``ranks`` event, and a stop or checkpoint is acted on by all ranks
at that step.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from transformers import TrainerCallback

from loratop.core import events as ev
from loratop.core.distributed import RankInfo, rank_info, worst_rank
from loratop.core.overfit import OVERFITTING, EvalTracker
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
from loratop.trainer.event_sink import BackgroundSink, EventSink, Sink
from loratop.trainer.memory_sampler import MemorySampler
from loratop.trainer.torch_facts import device_info, is_oom

CONTROL_CHECK_S = 0.2
"""Least time between two looks at the run folder's control requests (at step boundaries)."""

RANKS_EVERY_STEPS = 10
"""Under torchrun, the ranks meet every this many steps (and at step 1): each sends rank 0
its memory row and its stop/checkpoint wishes, and all act on them together at that step.
A fixed step rhythm, so every rank knows when without asking."""

STOPPED_BY_DASHBOARD = "stop requested"


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _plain(value: Any) -> Any:
    """A TrainingArguments value as YAML/JSON has it (enums by their value)."""
    value = getattr(value, "value", value)
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(str(v) for v in value)
    return value if isinstance(value, (str, int, float, bool, list, dict)) or value is None else str(value)


def settings_of(args: Any, model: Any) -> dict[str, Any]:
    """The run's settings in the sections of loratop's config, read from the script's
    ``TrainingArguments`` and the model's PEFT and quantization configs; a setting that
    cannot be read is left out (shown as ``–``), never filled with loratop's default."""
    training: dict[str, Any] = {}
    for key in (
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "warmup_ratio",
        "max_steps",
        "num_train_epochs",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "optim",
        "weight_decay",
        "max_grad_norm",
        "gradient_checkpointing",
        "seed",
        "save_steps",
        "eval_steps",
        "logging_steps",
    ):
        if hasattr(args, key):
            training[key] = _plain(getattr(args, key))
    length = getattr(args, "max_length", None) or getattr(args, "max_seq_length", None)
    if isinstance(length, int):
        training["max_seq_length"] = length
    settings: dict[str, Any] = {"training": training, "source": "LoratopCallback"}
    base = getattr(model, "get_base_model", lambda: model)()
    config = getattr(base, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    if name:
        settings["model"] = {"name_or_path": str(name)}
    peft_configs = getattr(model, "peft_config", None)
    if isinstance(peft_configs, dict) and peft_configs:
        peft = next(iter(peft_configs.values()))
        lora = {
            key: _plain(getattr(peft, key))
            for key in ("r", "lora_alpha", "lora_dropout", "target_modules", "bias")
            if getattr(peft, key, None) is not None
        }
        settings["lora"] = lora
    quant = getattr(config, "quantization_config", None)
    if quant is not None:
        q = quant.to_dict() if hasattr(quant, "to_dict") else dict(quant) if isinstance(quant, dict) else {}
        keys = ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype")
        settings["quantization"] = {k: _plain(q[k]) for k in keys if k in q}
    return settings


class RunPolicy(Protocol):
    """What a run that owns its trainer decides for itself, given to :class:`LoratopCallback`
    (``policy=``). loratop's own trainer (``train.Run``) is one: it owns the sink and the memory
    watch, decides stops, checkpoints, what a spike does and what an evaluation leads to (early
    stopping, best weights), and writes how the run ended. Without a policy the callback is a
    script's run and does all of that itself. The step stream (``step``, ``spike``,
    ``checkpoint`` events) is written by the callback, once, for both."""

    spikes: SpikeDetector
    rank: RankInfo

    def begin(self, state: Any) -> tuple[Sink, Any]:
        """Training begins: the run's ``run_started`` is written; its sink and memory watch."""
        ...

    def stepped(self, step: int, loss: float | None) -> None:
        """A step's loss arrived."""
        ...

    def spiked(self, spike: Any, control: Any) -> None:
        """The detector flagged a spike (the run writes it and acts on it)."""
        ...

    def controls(self, state: Any, control: Any) -> None:
        """At a step boundary: stop or checkpoint, as the run (and its ranks) decided."""
        ...

    def evaluated(self, step: int, metrics: dict[str, Any], control: Any, model: Any) -> None:
        """An evaluation ended."""
        ...

    def ended(self, state: Any) -> None:
        """Training ended (the run writes ``run_finished`` once its adapter is saved)."""
        ...


class LoratopCallback(TrainerCallback):
    """Watch a Hugging Face ``Trainer`` run in loratop (see the module docstring).

    Args:
        run_dir: The run folder; by default ``runs_dir/<name>-<date>-<time>``.
        runs_dir: Where the run folder goes when ``run_dir`` is not given (``runs/``, as
            ``loratop`` looks by default).
        name: The run's name; by default the last part of ``TrainingArguments.output_dir``.
        handle_signals: Also stop on SIGTERM/SIGINT and checkpoint on SIGUSR1 (only where
            the script left the default handler).
        spike_sensitivity: The spike detector's sensitivity (``monitor.spike_sensitivity``).
        memory_sample_hz: Memory samples per second.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        runs_dir: str | os.PathLike[str] = "runs",
        name: str | None = None,
        handle_signals: bool = False,
        spike_sensitivity: float = 1.0,
        memory_sample_hz: float = 1.0,
        policy: RunPolicy | None = None,
    ) -> None:
        self._policy = policy
        self._run_dir_arg = Path(run_dir) if run_dir is not None else None
        self._runs_dir = Path(runs_dir)
        self._name = name
        self._handle_signals = handle_signals
        self.spikes = SpikeDetector(sensitivity=spike_sensitivity)
        self._hz = memory_sample_hz
        self.run_dir: Path | None = None
        """The run folder, once training began (on the main process)."""
        self.sink: Sink | None = None
        """Where events go: a :class:`BackgroundSink` (loratop's own trainer: its EventSink)."""
        self._own_sink: BackgroundSink | None = None
        """The sink this callback made (a script's run) and closes at the end; ``None`` otherwise."""
        self._sampler: MemorySampler | None = None
        self._watch: Any = None
        self._started = 0.0
        self._last_step = 0
        self._last_step_time = 0.0
        self._stop: str | None = None
        self._saves_wanted = 0
        self._control_seen: dict[str, int] = {}
        self._control_checked = 0.0
        self._evals = EvalTracker(3, None)
        self._train_losses: list[float] = []
        self._finished = False
        self._installed: list[tuple[int, Any]] = []
        self.rank: RankInfo = rank_info()
        if policy is not None:
            self.spikes, self.rank = policy.spikes, policy.rank
        self._device: dict[str, Any] = {}
        self._began = False
        self._watch_closed = False
        self._said_write_error = False
        self._lock_fd: int | None = None

    @property
    def memory_watch(self) -> Any:
        """The run's :class:`~loratop.trainer.memory_watch.MemoryWatch` (batch tokens, OOM
        forecast, spills) once training began on the main process; ``None`` before or elsewhere."""
        return self._watch

    # -- the run folder -------------------------------------------------------------

    def _folder(self, args: Any) -> Path:
        if self._run_dir_arg is not None:
            return self._run_dir_arg
        name = self._name or Path(str(getattr(args, "output_dir", "") or "hf-run")).name or "hf-run"
        return self._runs_dir / f"{name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"

    # -- the hooks: the step stream every run shares -----------------------------------
    # What differs between a script's run and loratop's own trainer (a RunPolicy) is in
    # _begin, _stepped, _spiked, _controls, _evaluated and _ended, each of which hands over
    # to the policy when there is one; the events of the stream are written here, once, for both.

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self._began:
            return
        self._began = True
        self._begin(args, state, model, kwargs)
        if self._watch is not None:
            self._watch.start()
        self._last_step_time = time.monotonic()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._watch is not None:
            self._watch.step_begin()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        sink = self.sink
        if sink is None or not logs or "loss" not in logs:
            return  # the end-of-training summary has no per-step loss
        current = time.monotonic()
        self._last_step = state.global_step
        loss = _float(logs.get("loss"))
        grad_norm = _float(logs.get("grad_norm"))
        sink.emit(
            ev.STEP,
            step=state.global_step,
            loss=loss,
            lr=_float(logs.get("learning_rate")),
            grad_norm=grad_norm,
            tokens=int(getattr(state, "num_input_tokens_seen", 0) or 0),
            epoch=_float(logs.get("epoch", state.epoch)),
            step_time_s=round(current - self._last_step_time, 6),
        )
        self._last_step_time = current
        self._stepped(state.global_step, loss)
        spike = self.spikes.update(state.global_step, loss, grad_norm)
        if spike is not None:
            self._spiked(spike, control)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last_step = state.global_step
        if self._watch is not None:
            self._watch.step_end(state.global_step, kwargs.get("optimizer"))
        self._controls(args, state, control)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        self._evaluated(state, metrics or {}, control, kwargs)
        self._last_step_time = time.monotonic()  # the next step's time leaves the evaluation out

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.sink is not None:
            path = Path(args.output_dir).resolve() / f"checkpoint-{state.global_step}"
            self.sink.emit(ev.CHECKPOINT, step=state.global_step, path=str(path), final=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last_step = state.global_step
        self._close_watch()
        self._ended(state)

    def _close_watch(self) -> None:
        if self._watch is not None and not self._watch_closed:
            self._watch_closed = True
            self._watch.close(self._last_step)

    # -- a script's run: what loratop's own trainer does its own way ---------------------

    def _begin(self, args: Any, state: Any, model: Any, kwargs: dict[str, Any]) -> None:
        """Make the run folder and its first event (rank 0), or only sample memory (other ranks).

        A folder that cannot be made or written (a file in the way, a full or read-only disk)
        is said in one line on stderr and the callback stands aside: a watcher must never
        end someone's training."""
        if self._policy is not None:
            self.sink, self._watch = self._policy.begin(state)
            return
        import torch

        if not state.is_world_process_zero:
            # Another rank: it reports only through rank 0 (its memory row at each meeting).
            cuda = torch.cuda.is_available() and args.device.type == "cuda"
            self._device = device_info(torch, cuda)
            self._sampler = MemorySampler(lambda *a, **k: None, self._hz)
            self._sampler.start()
            return

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
            return
        if self._install_signal_handlers():
            write_status(self.run_dir, control="signals")
        make_reserve(self.run_dir)  # room for the last words should the disk fill (see _end)
        # Written by a thread of its own: the script's steps never wait for the disk.
        self.sink = self._own_sink = sink = BackgroundSink(events)
        atexit.register(self._at_exit)
        cuda = torch.cuda.is_available() and getattr(args, "device", None) is not None and args.device.type == "cuda"
        device = self._device = device_info(torch, cuda)
        if self.rank.distributed:
            device.update(rank=self.rank.rank, world_size=self.rank.world_size)
        self._sampler = MemorySampler(sink.emit, self._hz)
        if cuda:
            from loratop.trainer.memory_watch import cuda_figures

            self._sampler.torch_stats = cuda_figures
        params: dict[str, Any] = {}
        if model is not None and hasattr(model, "get_nb_trainable_parameters"):
            from loratop.trainer.audit import audit_parameters

            settings = getattr(model, "peft_config", {}) or {}
            bias = next(iter(settings.values())).bias if settings else "none"
            params = audit_parameters(model, train_biases=bias != "none").as_event()
        settings = settings_of(args, model)
        if self.rank.distributed:
            per_node = max(1, self.rank.local_world_size)
            settings["distributed"] = {"nproc_per_node": per_node, "nnodes": max(1, self.rank.world_size // per_node)}
        logging_steps = getattr(args, "logging_steps", 1)
        sink.emit(
            ev.RUN_STARTED,
            run_name=self.run_dir.name,
            run_dir=str(self.run_dir),
            pid=os.getpid(),
            config=settings,
            model=_model_info(model, settings),
            device=device,
            data={},
            max_steps=int(state.max_steps or 0),
            params=params,
            versions=_versions(),
        )
        if logging_steps != 1:
            sink.emit(
                ev.LOG,
                level="warning",
                message=f"logging_steps = {logging_steps}: loratop sees one loss every {logging_steps} steps "
                "(their mean); set logging_steps=1 for every step's own loss",
            )
        self._sampler.start()
        self._watch = _memory_watch(
            sink, self._sampler, model, kwargs.get("train_dataloader"), args, self.gpu_memory(args, cuda), settings
        )

    def gpu_memory(self, args: Any, cuda: bool) -> Any:
        """The GPU this process trains on, as the memory watch reads it
        (:class:`~loratop.trainer.memory_watch.CudaMemory`), or ``None`` on a CPU run.
        The one place a test without a GPU puts a stand-in."""
        from loratop.trainer.memory_watch import CudaMemory

        if not cuda:
            return None
        index = getattr(getattr(args, "device", None), "index", None)
        return CudaMemory(index if index is not None else self.rank.local_rank)

    def _stepped(self, step: int, loss: float | None) -> None:
        """A step's loss arrived: kept for the next evaluation's overfitting check."""
        if self._policy is not None:
            self._policy.stepped(step, loss)
            return
        if loss is not None:
            self._train_losses.append(loss)

    def _spiked(self, spike: Any, control: Any) -> None:
        if self._policy is not None:
            self._policy.spiked(spike, control)
            return
        if self.sink is not None:
            self.sink.emit(ev.SPIKE, **spike.as_event())

    def _controls(self, args: Any, state: Any, control: Any) -> None:
        """At a step boundary: the dashboard's requests (or signals), agreed between ranks."""
        if self._policy is not None:
            self._policy.controls(state, control)
            return
        if self.sink is not None:
            self._read_requests()
            self._say_write_error(state.global_step)
        if self.rank.distributed:
            # Ranks act only on what they agreed on at a meeting: one rank stopping alone
            # would leave the others waiting in a collective.
            if state.global_step != 1 and state.global_step % RANKS_EVERY_STEPS:
                return
            if not self._meet(state.global_step):
                return
        if self.sink is None:
            if self._stop and not control.should_training_stop:
                control.should_training_stop = True
            if self._saves_wanted:
                self._saves_wanted = 0
                control.should_save = True
            return
        if self._stop and not control.should_training_stop:
            control.should_training_stop = True
            self.sink.emit(ev.LOG, message=f"{self._stop}: stopping after step {state.global_step}")
        if self._saves_wanted:
            self._saves_wanted = 0
            if not control.should_save:
                control.should_save = True
                self.sink.emit(ev.LOG, message=f"checkpoint requested: saving after step {state.global_step}")

    def _evaluated(self, state: Any, metrics: dict[str, Any], control: Any, kwargs: dict[str, Any]) -> None:
        if self._policy is not None:
            self._policy.evaluated(state.global_step, metrics, control, kwargs.get("model"))
            return
        sink = self.sink
        if sink is None:
            return
        loss = _float(metrics.get("eval_loss"))
        losses = [x for x in self._train_losses if math.isfinite(x)]
        self._train_losses = []
        self._evals.add(
            state.global_step, loss if loss is not None else math.nan, sum(losses) / len(losses) if losses else None
        )
        best = self._evals.best
        sink.emit(
            ev.EVAL,
            step=state.global_step,
            eval_loss=loss,
            eval_tokens=None,
            eval_rows=_rows(kwargs.get("eval_dataloader")),
            duration_s=_float(metrics.get("eval_runtime")),
            best_loss=best.eval_loss if best else None,
            best_step=best.step if best else None,
        )
        message = self._evals.overfitting()
        if message is not None:
            sink.emit(ev.ALERT, kind=OVERFITTING, step=state.global_step, message=message)

    def _ended(self, state: Any) -> None:
        if self._policy is not None:
            self._policy.ended(state)
            return
        if self.sink is None:
            if self._sampler is not None:
                self._sampler.stop()  # another rank: nothing of its own to write
            return
        self._end(ev.STOPPED if self._stop else ev.COMPLETED)

    # -- several ranks --------------------------------------------------------------

    def _row(self) -> dict[str, Any]:
        """This rank's line in the ``ranks`` event, as a launched run's ranks report it."""
        from loratop.trainer.memory_watch import rank_memory_row

        sample = self._sampler.last if self._sampler is not None else None
        return rank_memory_row(self.rank, sample, self._device.get("kind"), self._watch)

    def _meet(self, step: int) -> bool:
        """Every rank at the same step: rows and wishes to all; rank 0 reports the rows.
        Returns whether a meeting happened (torch.distributed is up)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return False
        mine = {"row": self._row(), "stop": self._stop, "saves": self._saves_wanted}
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        stops = [g["stop"] for g in gathered if g and g.get("stop")]
        if stops and self._stop is None:
            self._stop = stops[0]
        self._saves_wanted = 1 if any(g and g.get("saves") for g in gathered) else 0
        if self.sink is not None:
            rows = [g["row"] for g in gathered if g]
            self.sink.emit(ev.RANKS, step=step, world_size=len(rows), ranks=rows, worst=worst_rank(rows))
        return True

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
        if counts.get("stop", 0) > self._control_seen.get("stop", 0) and self._stop is None:
            self._stop = STOPPED_BY_DASHBOARD
        if counts.get("checkpoint", 0) > self._control_seen.get("checkpoint", 0):
            self._saves_wanted += 1
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

    def _install_signal_handlers(self) -> bool:
        """Opt-in: SIGTERM/SIGINT stop, SIGUSR1 checkpoints, where the script kept the default.
        Returns whether SIGTERM and SIGUSR1 are both ours (then the dashboard may signal)."""
        if not self._handle_signals:
            return False
        import threading

        if threading.current_thread() is not threading.main_thread():
            return False
        ours = {signal.SIGTERM: self._on_stop, signal.SIGINT: self._on_stop, signal.SIGUSR1: self._on_save}
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

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self._stop is None:
            self._stop = signal.Signals(signum).name

    def _on_save(self, signum: int, frame: FrameType | None) -> None:
        self._saves_wanted += 1

    # -- the end --------------------------------------------------------------------

    def _end(self, status: str, error: dict[str, Any] | None = None) -> None:
        sink, run_dir = self._own_sink, self.run_dir
        if sink is None or run_dir is None or self._finished:
            return
        self._finished = True
        with contextlib.suppress(Exception):
            self._close_watch()  # already closed at train end; not when the script died mid-run
        if self._sampler is not None:
            self._sampler.stop()
        fields: dict[str, Any] = {"status": status, "duration_s": round(time.time() - self._started, 3)}
        fields["step"] = self._last_step
        fields["adapter"] = None  # the script saves its model itself
        if self._stop:
            fields["stopped_by"] = self._stop
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

    def _at_exit(self) -> None:
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


def _model_info(model: Any, settings: dict[str, Any]) -> dict[str, Any]:
    base = getattr(model, "get_base_model", lambda: model)() if model is not None else None
    config = getattr(base, "config", None)
    linear4bit = sum(1 for m in base.modules() if type(m).__name__ == "Linear4bit") if base is not None else 0
    quant = settings.get("quantization") or {}
    return {
        "name_or_path": (settings.get("model") or {}).get("name_or_path"),
        "model_type": getattr(config, "model_type", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "quantized_linear_layers": linear4bit,
        "load_in_4bit": bool(quant.get("load_in_4bit")),
        "quant_type": quant.get("bnb_4bit_quant_type") if quant.get("load_in_4bit") else None,
    }


def _versions() -> dict[str, str]:
    """The libraries' versions, of those the script imported."""
    out = {"python": platform.python_version()}
    for module in ("torch", "transformers", "peft", "bitsandbytes", "trl"):
        version = getattr(sys.modules.get(module), "__version__", None)
        if isinstance(version, str):
            out[module] = version
    return out


def _rows(dataloader: Any) -> int | None:
    """Rows in an eval dataloader's dataset, when it has a length."""
    try:
        return len(dataloader.dataset)
    except (AttributeError, TypeError):
        return None


def _memory_watch(
    sink: BackgroundSink, sampler: MemorySampler, model: Any, dataloader: Any, args: Any, gpu: Any, settings: Any
) -> Any:
    """The step-boundary memory work (OOM forecast, paged state, spills) of a script's run."""
    from loratop.core.oom_forecast import worst_batch_tokens
    from loratop.trainer.memory_watch import BatchRecorder, MemoryWatch

    batch = int(getattr(args, "per_device_train_batch_size", 1) or 1)
    recorder = BatchRecorder()
    if model is not None and hasattr(model, "register_forward_pre_hook"):
        recorder.attach(model)  # the batch the model runs, not the one collated ahead of it
    dataset: Any = getattr(dataloader, "dataset", None)
    lengths: list[int] = []
    if dataset is not None and "input_ids" in (getattr(dataset, "column_names", None) or []):
        with contextlib.suppress(Exception):
            lengths = [len(ids) for ids in dataset["input_ids"]]
    cap = getattr(args, "max_length", None) or (max(lengths) if lengths else 0)
    worst = worst_batch_tokens(lengths, batch, int(cap)) if lengths else 0
    optim = str(_plain(getattr(args, "optim", "")))
    return MemoryWatch(
        sink.emit,
        sampler,
        recorder,
        gpu,
        worst,
        batch,
        paged_optimizer=optim.startswith("paged_"),
        knobs=settings.get("training") or {},
    )
