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

Under ``torchrun`` only the main process (``state.is_world_process_zero``) writes; the ranks
meet at step boundaries as a launched run's do (:class:`~loratop.trainer.rank_meeting.RankMeeting`),
rank 0 reports each rank's memory as a ``ranks`` event, and a stop or checkpoint is acted on
by all ranks at the same step.

The callback only turns the Trainer's hooks into calls of a :class:`RunPolicy`, besides what
every run shares: the ``step`` stream and its timing, the spike detector's feed, checkpoints
and the memory watch. A script's run is :class:`~loratop.trainer.script_run.ScriptRunPolicy`;
loratop's own trainer (``train.Run``) gives itself as the policy.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Protocol

from transformers import TrainerCallback

from loratop.core import events as ev
from loratop.core.distributed import RankInfo
from loratop.core.spikes import SpikeDetector
from loratop.trainer.eval_report import float_or_none
from loratop.trainer.event_sink import Sink
from loratop.trainer.script_facts import settings_of
from loratop.trainer.script_run import ScriptRunPolicy


class RunPolicy(Protocol):
    """What a run decides for itself, given to :class:`LoratopCallback` (``policy=``): its sink
    and memory watch, stops, checkpoints, what a spike does, what an evaluation leads to, and
    how the run ended. loratop's own trainer (``train.Run``) is one, a script's run
    (:class:`~loratop.trainer.script_run.ScriptRunPolicy`) the other. The step stream
    (``step``, ``checkpoint`` events) is written by the callback, once, for both."""

    spikes: SpikeDetector
    rank: RankInfo

    def begin(self, args: Any, state: Any, model: Any, hooks: dict[str, Any]) -> tuple[Sink | None, Any]:
        """Training begins: ``run_started`` is written; returns the run's sink (``None``: this
        process writes nothing) and memory watch (``None``: none)."""
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

    def evaluated(self, step: int, metrics: dict[str, Any], control: Any, hooks: dict[str, Any]) -> None:
        """An evaluation ended (``hooks``: the Trainer's keyword arguments: model, dataloaders)."""
        ...

    def ended(self, state: Any) -> None:
        """Training ended (a launched run writes ``run_finished`` once its adapter is saved)."""
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
        policy: The run that decides (loratop's own trainer); by default a script's run
            (:class:`~loratop.trainer.script_run.ScriptRunPolicy`) made of the arguments above.
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
        if policy is None:
            policy = ScriptRunPolicy(
                Path(run_dir) if run_dir is not None else None,
                Path(runs_dir),
                name,
                handle_signals,
                spike_sensitivity,
                memory_sample_hz,
                self.gpu_memory,
            )
        self.policy: RunPolicy = policy
        self.spikes = self.policy.spikes
        self.rank: RankInfo = self.policy.rank
        self.sink: Sink | None = None
        """Where events go, once training began on the main process (the policy's sink)."""
        self._watch: Any = None
        self._last_step = 0
        self._last_step_time = 0.0
        self._began = False
        self._watch_closed = False

    @property
    def run_dir(self) -> Path | None:
        """The run folder, once training began (on the main process)."""
        return getattr(self.policy, "run_dir", None)

    @property
    def memory_watch(self) -> Any:
        """The run's :class:`~loratop.trainer.memory_watch.MemoryWatch` (batch tokens, OOM
        forecast, spills) once training began on the main process; ``None`` before or elsewhere."""
        return self._watch

    def gpu_memory(self, args: Any, cuda: bool) -> Any:
        """The GPU this process trains on, as a script's memory watch reads it
        (:class:`~loratop.trainer.memory_watch.CudaMemory`), or ``None`` on a CPU run.
        The one place a test without a GPU puts a stand-in."""
        from loratop.trainer.memory_watch import CudaMemory

        if not cuda:
            return None
        index = getattr(getattr(args, "device", None), "index", None)
        return CudaMemory(index if index is not None else self.rank.local_rank)

    # -- the hooks: the step stream every run shares, the rest handed to the policy ----

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self._began:
            return
        self._began = True
        self.sink, self._watch = self.policy.begin(args, state, model, kwargs)
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
        loss = float_or_none(logs.get("loss"))
        grad_norm = float_or_none(logs.get("grad_norm"))
        sink.emit(
            ev.STEP,
            step=state.global_step,
            loss=loss,
            lr=float_or_none(logs.get("learning_rate")),
            grad_norm=grad_norm,
            tokens=int(getattr(state, "num_input_tokens_seen", 0) or 0),
            epoch=float_or_none(logs.get("epoch", state.epoch)),
            step_time_s=round(current - self._last_step_time, 6),
        )
        self._last_step_time = current
        self.policy.stepped(state.global_step, loss)
        spike = self.spikes.update(state.global_step, loss, grad_norm)
        if spike is not None:
            self.policy.spiked(spike, control)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last_step = state.global_step
        if self._watch is not None:
            self._watch.step_end(state.global_step, kwargs.get("optimizer"))
        self.policy.controls(state, control)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        self.policy.evaluated(state.global_step, metrics or {}, control, kwargs)
        self._last_step_time = time.monotonic()  # the next step's time leaves the evaluation out

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.sink is not None:
            path = Path(args.output_dir).resolve() / f"checkpoint-{state.global_step}"
            self.sink.emit(ev.CHECKPOINT, step=state.global_step, path=str(path), final=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last_step = state.global_step
        if self._watch is not None and not self._watch_closed:
            self._watch_closed = True
            self._watch.close(self._last_step)
        self.policy.ended(state)


__all__ = ["LoratopCallback", "RunPolicy", "settings_of"]
