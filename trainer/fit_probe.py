"""``loratop fit``'s probe: load the model once, as a run does, and run a few real optimizer steps
on the dataset's longest rows at each (micro-batch, sequence length, checkpointing) point of the plan.

    python -m loratop.trainer.fit_probe CONFIG [--set section.key=value ...] [--budget S] [--headroom F]

It speaks JSON lines on its standard output (``{"kind": "progress", "message": ...}`` while it
loads and steps, then one ``{"kind": "result", "result": ...}`` or ``{"kind": "refused", ...}``);
everything the libraries print goes to standard error. The plan and the verdict are
:mod:`preflight.fit_plan`'s; this module only measures, through a :class:`MemorySource`:
:class:`CudaMemorySource` (torch.cuda and NVML) on a GPU, or — for CPU tests only —
:class:`FakeMemorySource`, selected by :data:`~loratop.preflight.fit_plan.FAKE_MEMORY_ENV`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Protocol

from loratop.preflight.config import ConfigError, RunConfig, load_config, parse_overrides
from loratop.preflight.fit_plan import (
    DEFAULT_BUDGET_S,
    DEFAULT_HEADROOM,
    FAKE_MEMORY_ENV,
    NO_GPU_LINE,
    STEPS,
    FitResult,
    Measurement,
    Point,
    candidates,
    probe_order,
    run_plan,
    verdict,
)
from loratop.trainer.torch_facts import is_oom

EXIT_REFUSED = 2


class MemorySource(Protocol):
    """Where the probe reads peak memory and GPU busy %. The real one is :class:`CudaMemorySource`;
    CPU tests use :class:`FakeMemorySource` behind the same methods."""

    name: str
    """The GPU's name, for the table's header."""
    fake: bool

    def available(self) -> int:
        """Bytes torch can have: the GPU's total minus what is not torch's (CUDA context, other processes)."""
        ...

    def reset(self) -> None:
        """Start a new peak (and a new busy % average) at a point's beginning."""
        ...

    def step_done(self, tokens: int) -> None:
        """One optimizer step of ``tokens`` padded tokens per micro-batch has run."""
        ...

    def peak(self) -> int:
        """The largest allocated bytes since :meth:`reset`."""
        ...

    def busy_pct(self) -> float | None:
        """The GPU busy % since :meth:`reset`; ``None`` when not known."""
        ...


class CudaMemorySource:
    """The real adapter: torch.cuda's allocator counters and NVML's utilisation (where it has one)."""

    fake = False

    def __init__(self, torch: Any, device: int = 0) -> None:
        from loratop.core.gpu_devices import NVML_OK, GpuDevices

        self._torch = torch
        self.device = device
        self.name = torch.cuda.get_device_name(device)
        self._nvml: GpuDevices | None = GpuDevices()
        if self._nvml.state != NVML_OK:
            self._nvml.close()
            self._nvml = None
        self._busy: list[float] = []

    def available(self) -> int:
        free, total = self._torch.cuda.mem_get_info(self.device)
        reserved = self._torch.cuda.memory_reserved(self.device)
        return int(total - max(0, total - free - reserved))

    def reset(self) -> None:
        self._torch.cuda.synchronize(self.device)
        self._torch.cuda.reset_peak_memory_stats(self.device)
        self._busy = []

    def step_done(self, tokens: int) -> None:
        self._torch.cuda.synchronize(self.device)  # the step's time is the GPU's, not the launch's
        if self._nvml is None:
            return
        from loratop.core.gpu_busy import row_busy
        from loratop.core.gpu_devices import row_for_cuda

        with contextlib.suppress(Exception):
            row = row_for_cuda(self._nvml.read(), self.device)
            value = row_busy(row) if row is not None else None
            if value is not None:
                self._busy.append(value)

    def peak(self) -> int:
        return int(self._torch.cuda.max_memory_allocated(self.device))

    def busy_pct(self) -> float | None:
        return sum(self._busy) / len(self._busy) if self._busy else None


class FakeOutOfMemoryError(RuntimeError):
    """What :class:`FakeMemorySource` raises past its total: named and worded like torch's."""


FakeOutOfMemoryError.__name__ = "OutOfMemoryError"


class FakeMemorySource:
    """A TEST FAKE for CPU tests: peak = base + per_token × tokens; above ``total`` it raises an
    out-of-memory error as torch would. Its busy % is ``None`` ("n/a"), never a made-up number.

    Args:
        spec: ``base_bytes,per_token_bytes,total_bytes`` (the value of ``LORATOP_FIT_FAKE_MEMORY``).
    """

    fake = True
    name = "fake GPU (test fake memory source)"

    def __init__(self, spec: str) -> None:
        try:
            base, per_token, total = (float(x) for x in spec.split(","))
        except ValueError:
            raise ValueError(f"{FAKE_MEMORY_ENV}={spec!r}: want base_bytes,per_token_bytes,total_bytes") from None
        self.base, self.per_token, self.total = base, per_token, int(total)
        self._peak = 0

    def available(self) -> int:
        return self.total

    def reset(self) -> None:
        self._peak = 0

    def step_done(self, tokens: int) -> None:
        need = int(self.base + self.per_token * tokens)
        if need > self.total:
            raise FakeOutOfMemoryError(
                f"CUDA out of memory (fake memory source): {need:,} bytes wanted, {self.total:,} total"
            )
        self._peak = max(self._peak, need)

    def peak(self) -> int:
        return self._peak

    def busy_pct(self) -> float | None:
        return None


# -- the one adapter onto the trainer's own building code ---------------------------------------


def build_like_a_run(config: RunConfig, folder: Path, say: Any) -> Any:
    """The model (4-bit, LoRA), the tokenised data and the Trainer, built exactly as a run builds
    them. The one place the probe touches the trainer's building code: repoint it here when that
    code moves."""
    from loratop.trainer.train import NullSink, Run

    class _Say(NullSink):
        def emit(self, type_: str, **fields: Any) -> None:
            if "message" in fields:
                say(str(fields["message"]))

    return Run(config, folder, _Say()).setup()


# -- the probe ----------------------------------------------------------------------------------


class Probe:
    """The loaded model and its rows, stepped at one point after another."""

    def __init__(self, torch: Any, trainer: Any, memory: MemorySource, compute_dtype: str) -> None:
        self.torch = torch
        self.trainer = trainer
        self.model = trainer.model
        self.memory = memory
        self.optimizer = trainer.create_optimizer()  # the config's optim (paged_adamw_8bit), as a run's
        ids = trainer.train_dataset["input_ids"]
        self.rows = sorted((list(row) for row in ids), key=len, reverse=True)
        self.longest = len(self.rows[0]) if self.rows else 0
        self.device = next(self.model.parameters()).device
        self.dtype = getattr(torch, compute_dtype)
        self.model.config.use_cache = False

    def batch(self, point: Point) -> dict[str, Any]:
        """``micro_batch`` of the longest rows, truncated to the point's length, collated as a run does."""
        rows = [{"input_ids": self.rows[i % len(self.rows)][: point.seq_len]} for i in range(point.micro_batch)]
        batch = self.trainer.data_collator(rows)
        return {k: v.to(self.device) for k, v in batch.items() if hasattr(v, "to")}

    def run_point(self, point: Point) -> Measurement:
        """:data:`STEPS` real optimizer steps at ``point``; an out-of-memory error is a measurement."""
        torch = self.torch
        tokens = point.tokens(self.longest)
        self._checkpointing(point.grad_ckpt)
        self.model.train()
        start = time.monotonic()
        timed_from = start
        self.memory.reset()
        batch: Any = None
        loss: Any = None
        oom: str | None = None
        try:
            for step in range(STEPS):
                if step == 1:
                    timed_from = time.monotonic()
                batch = self.batch(point)
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    loss = self.model(**batch).loss
                loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                batch = loss = None
                self.memory.step_done(tokens)
        except Exception as exc:
            if not is_oom(exc):
                raise
            oom = str(exc).splitlines()[0][:200]
        if oom is not None:
            # Outside the except block: the traceback's frames no longer hold the step's tensors.
            batch = loss = None
            self._recover()
            return Measurement(point, tokens, None, time.monotonic() - start, oom=oom)
        end = time.monotonic()
        timed = max(end - timed_from, 1e-9)
        return Measurement(
            point,
            tokens,
            self.memory.peak(),
            end - start,
            tokens_per_s=tokens * (STEPS - 1) / timed,
            step_seconds=timed / (STEPS - 1),
            busy_pct=self.memory.busy_pct(),
        )

    def _checkpointing(self, on: bool) -> None:
        import warnings

        with warnings.catch_warnings():
            # transformers 5.25 renames these activation_checkpointing_* (other arguments); the GPU box's
            # 5.17 has only these: one spelling for both, its deprecation notice kept out of the log.
            warnings.simplefilter("ignore", FutureWarning)
            if on:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_disable()

    def _recover(self) -> None:
        """After an out-of-memory error: drop the half-built step so the next point starts clean."""
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def prior_for(config: RunConfig) -> Any:
    """The pre-flight estimate's peak for a point (``None`` when the model's shape is unknown)."""
    from loratop.preflight.estimate import EstimateError, estimate, load_model_shape

    try:
        shape = load_model_shape(config.model.name_or_path, download=False)
    except EstimateError:
        return lambda point: None

    def prior(point: Point) -> int | None:
        c = config.model_copy(deep=True)
        c.training.per_device_train_batch_size = point.micro_batch
        c.training.max_seq_length = point.seq_len
        c.training.gradient_checkpointing = point.grad_ckpt
        est = estimate(shape, c, None)
        return est.row(est.selected).total

    return prior


def probe(config: RunConfig, budget_s: float, headroom: float, say: Any) -> FitResult:
    """Load once, plan, probe within the budget, and give the verdict."""
    say("importing torch, transformers, peft")
    import torch

    fake = os.environ.get(FAKE_MEMORY_ENV)
    memory: MemorySource = FakeMemorySource(fake) if fake else CudaMemorySource(torch)
    t = config.training
    built = config.model_copy(deep=True)
    # Loaded with checkpointing on (inputs that require grad), so each point can turn it off or on.
    built.training.gradient_checkpointing = True
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="loratop-fit-") as folder:
        trainer = build_like_a_run(built, Path(folder), say)
        load_s = time.monotonic() - started
        say(f"loaded in {load_s:.1f} s; planning")
        p = Probe(torch, trainer, memory, config.quantization.bnb_4bit_compute_dtype)
        points = candidates(
            t.per_device_train_batch_size, t.gradient_accumulation_steps, t.max_seq_length, t.gradient_checkpointing
        )
        available = memory.available()
        order = probe_order(points, p.longest, prior_for(config), available, t.gradient_checkpointing, headroom)
        measured, skipped = run_plan(order, p.longest, p.run_point, budget_s, say=say, points=points)
        # Again after the steps: the optimizer's paged state and the kernels' workspaces are not
        # torch's allocator's, and now they exist.
        available = min(available, memory.available())
    effective = t.per_device_train_batch_size * t.gradient_accumulation_steps
    rows, best, fits, notes = verdict(points, measured, p.longest, available, effective, headroom)
    notes.insert(0, f"the dataset's longest row: {p.longest:,} tokens (max_seq_length {t.max_seq_length})")
    return FitResult(
        rows=rows,
        recommended=best,
        available=available,
        headroom_frac=headroom,
        effective_batch=effective,
        budget_s=budget_s,
        spent_s=sum(m.seconds for m in measured),
        load_s=load_s,
        skipped=skipped,
        notes=notes,
        gpu_name=memory.name,
        fake_memory=memory.fake,
        fits=fits,
    )


def _protocol_stream() -> IO[str]:
    """Our own copy of standard output for the JSON lines; fd 1 then points at standard error,
    so whatever a library prints never lands in the protocol."""
    sys.stdout.flush()
    stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loratop.trainer.fit_probe")
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S)
    parser.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM)
    args = parser.parse_args(argv)
    out = _protocol_stream()

    def send(kind: str, **fields: Any) -> None:
        out.write(json.dumps({"kind": kind, **fields}) + "\n")

    def say(message: str) -> None:
        send("progress", message=message)

    try:
        config = load_config(args.config, parse_overrides(args.overrides), check_files=False)
    except ConfigError as exc:
        send("refused", message="; ".join(exc.problems))
        return EXIT_REFUSED
    if not os.environ.get(FAKE_MEMORY_ENV):
        import torch

        if not torch.cuda.is_available():
            send("refused", message=NO_GPU_LINE.format(config=args.config))
            return EXIT_REFUSED
    from loratop.trainer.train import UserFacingError

    try:
        result = probe(config, args.budget, args.headroom, say)
    except UserFacingError as exc:
        send("refused", message=str(exc))
        return EXIT_REFUSED
    send("result", result=result.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
