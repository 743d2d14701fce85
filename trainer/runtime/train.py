"""The training subprocess: ``python -m loratop.trainer CONFIG --run-dir DIR [--events-fd N]``.

Reads top to bottom: :meth:`Run.setup` loads the 4-bit base, attaches LoRA, audits
what trains and builds the TRL trainer; :meth:`Run.fit` trains, reporting each
optimizer step through the event sink. Library output (transformers, TRL, datasets,
bitsandbytes all print) goes to this process's stdout/stderr, which the launcher
sends to ``trainer.log``; events go only to the sink.

Signals: SIGINT/SIGTERM stop at the next step boundary and save the adapter
(status ``stopped``); SIGUSR1 saves a checkpoint at the next step boundary and goes on.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from loratop.trainer import events as ev
from loratop.trainer.config import ConfigError, RunConfig, dump_config, load_config
from loratop.trainer.run_dir import (
    ADAPTER,
    CONFIG,
    EVENTS,
    RunDirTaken,
    hold_run_dir,
    now,
    process_identity,
    write_status,
)
from loratop.trainer.runtime.event_sink import EventSink
from loratop.trainer.runtime.memory_sampler import MemorySampler
from loratop.trainer.spikes import SpikeDetector

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

# Exit codes by run_finished status.
EXIT_BY_STATUS = {ev.COMPLETED: EXIT_OK, ev.STOPPED: EXIT_OK, ev.FAILED: EXIT_FAILED, ev.OOM: EXIT_FAILED}


class UserFacingError(Exception):
    """A failure the user can fix; its message is shown as is, without a traceback."""


class Run:
    """One training run, from loading the model to the last event.

    Args:
        config: The validated config (``output_dir`` is the run folder).
        run_dir: The run folder; created if missing.
        sink: Where events go.
    """

    def __init__(self, config: RunConfig, run_dir: Path, sink: EventSink) -> None:
        self.config = config
        self.run_dir = run_dir
        self.sink = sink
        self.stop_requested: str | None = None
        """The name of the signal that asked the run to stop, once one has."""
        self.save_requested = False
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
        self.save_requested = True

    # -- the run ----------------------------------------------------------------

    def execute(self) -> int:
        """Set up, train, and always finish with one ``run_finished`` event.

        Returns:
            The process exit code.
        """
        # pid + host + boot + start time: what lets a watcher prove later that a live pid is
        # still this trainer before it signals it (a pid alone may have been reused).
        write_status(
            self.run_dir,
            pid=os.getpid(),
            **process_identity(os.getpid()),
            state="running",
            started_at=self.started_at,
            ended_at=None,
        )
        self._sampler.start()
        status, error = ev.COMPLETED, None
        try:
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
            status = ev.OOM if _is_oom(exc) else ev.FAILED
            lines = traceback.format_exception(exc)
            tail = "".join(lines).rstrip().splitlines()[-12:]
            error = {"message": f"{type(exc).__name__}: {exc}".strip(), "traceback": tail}
            if status == ev.OOM:
                error.update(self._oom_post_mortem())
            traceback.print_exception(exc)  # the whole thing, into trainer.log
        finally:
            self._sampler.stop()
        fields: dict[str, Any] = {"status": status, "duration_s": round(now() - self.started_at, 3)}
        if self.stop_requested:
            fields["stopped_by"] = self.stop_requested
        if error:
            fields["error"] = error
        self.sink.emit(ev.RUN_FINISHED, **fields)
        code = EXIT_BY_STATUS[status]
        write_status(self.run_dir, state="finished", status=status, exit_code=code, ended_at=now())
        self.sink.close()
        return code

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
        from loratop.trainer.oom_forecast import OOM_SUGGESTIONS

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
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        cuda = torch.cuda.is_available()
        self._device = _device_info(torch, cuda)
        if cuda:
            self._sampler.torch_stats = _torch_cuda_stats
        transformers.set_seed(cfg.training.seed)

        path = cfg.model.name_or_path
        if path == "tiny":
            from loratop.trainer.runtime.tiny_model import tiny_model_dir

            self.sink.emit(ev.LOG, message="preparing the embedded tiny model")
            folder, built = tiny_model_dir()
            self.sink.emit(ev.LOG, message=("built" if built else "cached") + f" tiny model at {folder}")
            path = str(folder)

        compute_dtype = getattr(torch, cfg.quantization.bnb_4bit_compute_dtype)
        if compute_dtype == torch.float16 and not cuda:
            raise UserFacingError("quantization.bnb_4bit_compute_dtype = 'float16' needs a GPU; use bfloat16 on CPU")
        if compute_dtype == torch.bfloat16 and cuda and not torch.cuda.is_bf16_supported():
            raise UserFacingError(
                "quantization.bnb_4bit_compute_dtype = 'bfloat16' is not supported on this GPU; use float16"
            )

        self.sink.emit(ev.LOG, message=f"loading {cfg.model.name_or_path}")
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        quantization = None
        if cfg.quantization.load_in_4bit:
            quantization = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=cfg.quantization.bnb_4bit_quant_type,
                bnb_4bit_use_double_quant=cfg.quantization.bnb_4bit_use_double_quant,
                bnb_4bit_compute_dtype=compute_dtype,
            )
        model = AutoModelForCausalLM.from_pretrained(
            path,
            quantization_config=quantization,
            dtype=compute_dtype,
            device_map={"": 0} if cuda else None,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        self._model_info = _model_info(model, cfg)

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
            model = get_peft_model(model, lora)  # type: ignore[assignment]  # a PeftModel wraps the base
        except ValueError as exc:
            if "not found in the base model" in str(exc) or "Target module" in str(exc):
                raise UserFacingError(f"lora.target_modules = {cfg.lora.target_modules}: {exc}") from None
            raise

        dataset = self._load_dataset()
        trainer = self._build_trainer(model, tokenizer, dataset, cuda)
        self._audit_or_refuse(trainer.model)
        self._watch_memory(trainer, cuda)
        return trainer

    def _watch_memory(self, trainer: Any, cuda: bool) -> None:
        """Record batch sizes and prepare the OOM forecast from the tokenised lengths."""
        from loratop.trainer.oom_forecast import worst_batch_tokens
        from loratop.trainer.runtime.memory_watch import BatchRecorder, MemoryWatch

        t = self.config.training
        recorder = BatchRecorder(trainer.data_collator)
        trainer.data_collator = recorder
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
            cuda,
            worst,
            t.per_device_train_batch_size,
            paged_optimizer=t.optim.startswith("paged_"),
        )

    def _load_dataset(self) -> Any:
        from datasets import Dataset, load_dataset

        from loratop.trainer.data_files import DataProblem, inspect_data, load_rows

        cfg = self.config.data
        self.sink.emit(ev.LOG, message=f"loading data from {cfg.path}")
        try:
            info = inspect_data(cfg.path, cfg.format)
        except DataProblem as exc:
            raise UserFacingError(f"data.path = {cfg.path!r}: {exc}") from None
        if info.file is not None:
            rows = load_rows(info.file)
            if cfg.max_rows:
                rows = rows[: cfg.max_rows]
            fmt = info.format
            columns = {"messages": ["messages"], "prompt_completion": ["prompt", "completion"], "text": ["text"]}
            keep = columns[fmt or "text"]
            dataset = Dataset.from_list([{k: row[k] for k in keep} for row in rows])
        else:
            dataset = load_dataset(cfg.path, split=cfg.split)
            if cfg.max_rows:
                dataset = dataset.select(range(min(cfg.max_rows, len(dataset))))
            fmt = cfg.format
        self._data_info = {"path": cfg.path, "source": info.source, "rows": len(dataset), "format": fmt}
        return dataset

    def _build_trainer(self, model: Any, tokenizer: Any, dataset: Any, cuda: bool) -> Any:
        from trl import SFTConfig, SFTTrainer

        cfg = self.config
        t = cfg.training
        dtype = cfg.quantization.bnb_4bit_compute_dtype
        warmup: float | int = t.warmup_steps if t.warmup_steps < 1 else int(t.warmup_steps)
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
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        self.sink.emit(ev.LOG, message=f"tokenising {len(dataset)} rows")
        return SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[_event_callback(self)],
        )

    def _audit_or_refuse(self, model: Any) -> None:
        from loratop.trainer.runtime.audit import audit_parameters

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
        """Train, then save the adapter (also when stopped early)."""
        trainer.train()
        adapter = self.run_dir / ADAPTER
        trainer.model.save_pretrained(str(adapter))
        self.sink.emit(ev.CHECKPOINT, step=trainer.state.global_step, path=str(adapter), final=True)

    def run_started_fields(self, max_steps: int) -> dict[str, Any]:
        """The ``run_started`` event: everything known once the model is ready."""
        import bitsandbytes
        import peft
        import torch
        import transformers
        import trl

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
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "bitsandbytes": bitsandbytes.__version__,
                "trl": trl.__version__,
            },
        }


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _event_callback(run: Run) -> Any:
    """A ``TrainerCallback`` that turns the HF Trainer's hooks into events."""
    from transformers import TrainerCallback

    class EventCallback(TrainerCallback):
        def __init__(self) -> None:
            self.last_step_time = time.monotonic()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            run.sink.emit(ev.RUN_STARTED, **run.run_started_fields(state.max_steps))
            run.watch.start()
            self.last_step_time = time.monotonic()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            run.watch.step_begin()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            run.watch.close(state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if not logs or "loss" not in logs:
                return  # the end-of-training summary has no per-step loss
            current = time.monotonic()
            run._last_step = state.global_step
            loss = _float_or_none(logs.get("loss"))
            grad_norm = _float_or_none(logs.get("grad_norm"))
            run.sink.emit(
                ev.STEP,
                step=state.global_step,
                loss=loss,
                lr=_float_or_none(logs.get("learning_rate")),
                grad_norm=grad_norm,
                tokens=int(state.num_input_tokens_seen or 0),
                epoch=_float_or_none(logs.get("epoch", state.epoch)),
                step_time_s=round(current - self.last_step_time, 6),
            )
            self.last_step_time = current
            spike = run.spikes.update(state.global_step, loss, grad_norm)
            if spike is not None:
                run.on_spike(spike, control)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            run.watch.step_end(state.global_step, kwargs.get("optimizer"))
            if run.stop_requested and not control.should_training_stop:
                control.should_training_stop = True
                run.sink.emit(ev.LOG, message=f"{run.stop_requested}: stopping after step {state.global_step}")
            if run.save_requested:
                run.save_requested = False
                control.should_save = True
                run.sink.emit(ev.LOG, message=f"SIGUSR1: saving a checkpoint after step {state.global_step}")

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            run.sink.emit(ev.CHECKPOINT, step=state.global_step, path=str(path), final=False)

    return EventCallback()


def _is_oom(exc: BaseException) -> bool:
    name = type(exc).__name__
    text = str(exc).lower()
    return name == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


def _device_info(torch: Any, cuda: bool) -> dict[str, Any]:
    if not cuda:
        return {"kind": "cpu", "name": platform.processor() or platform.machine(), "count": 0}
    count = torch.cuda.device_count()
    return {
        "kind": "cuda",
        "count": count,
        "names": [torch.cuda.get_device_name(i) for i in range(count)],
        "name": torch.cuda.get_device_name(0),
    }


def _torch_cuda_stats(index: int) -> dict[str, int] | None:
    """Torch's allocator figures for one GPU; ``peak`` is since the current step began."""
    import torch

    if index >= torch.cuda.device_count():
        return None
    stats = torch.cuda.memory_stats(index)
    return {
        "allocated": int(stats.get("allocated_bytes.all.current", 0)),
        "reserved": int(stats.get("reserved_bytes.all.current", 0)),
        "peak": int(stats.get("allocated_bytes.all.peak", 0)),
        "inactive_split": int(stats.get("inactive_split_bytes.all.current", 0)),
        "num_alloc_retries": int(stats.get("num_alloc_retries", 0)),
        "num_ooms": int(stats.get("num_ooms", 0)),
    }


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


def build_arg_parser() -> argparse.ArgumentParser:
    """``python -m loratop.trainer`` arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m loratop.trainer", description="loratop's QLoRA training subprocess"
    )
    parser.add_argument("config", help="YAML run config (usually the run folder's resolved config.yaml)")
    parser.add_argument("--run-dir", required=True, help="run folder: events.jsonl, status.json, adapters go here")
    parser.add_argument("--events-fd", type=int, default=None, help="write end of the watcher's pipe (inherited fd)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the training subprocess. Returns the exit code."""
    args = build_arg_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    try:
        config = load_config(args.config, {"output_dir": str(run_dir)}, check_files=False)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"loratop trainer: {line}", file=sys.stderr)
        return EXIT_CONFIG
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        # Held until this process ends: a second trainer pointed here must not interleave
        # its events and checkpoints with ours.
        hold_run_dir(run_dir)  # its fd stays open (and the lock held) until the process exits
    except RunDirTaken as exc:
        print(f"loratop trainer: {exc}; not writing into it", file=sys.stderr)
        return EXIT_CONFIG
    if not (run_dir / CONFIG).exists():
        (run_dir / CONFIG).write_text(dump_config(config))
    if args.events_fd is not None:
        try:
            os.fstat(args.events_fd)
        except OSError:
            print(f"loratop trainer: --events-fd {args.events_fd} is not an open file descriptor", file=sys.stderr)
            return EXIT_CONFIG
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run = Run(config, run_dir, EventSink(run_dir / EVENTS, args.events_fd))
    run.install_signal_handlers()
    return run.execute()


__all__ = ["Run", "main"]
