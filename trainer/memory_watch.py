"""Per-step memory bookkeeping in the trainer: batch sizes, peaks, OOM risk, paged state.

:class:`BatchRecorder` reads each micro-batch's padded token count off the model's own
forward call (peak memory follows it). :class:`MemoryWatch` is called at every step
boundary: it resets the GPU's peak counter, feeds the OOM forecaster and reports a level
change, and accounts the paged optimizer state once the optimizer exists. What it reads of
the GPU goes through one adapter, :class:`CudaMemory` (torch's allocator counters,
bitsandbytes' paged buffers, the CUPTI spill source); tests without a GPU hand it a
stand-in with the same methods.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from loratop.core import events as ev
from loratop.core.gpu_busy import GPU_STARVED, StarvedGpu, row_busy, starved_causes, starved_message
from loratop.core.gpu_devices import row_for_cuda
from loratop.core.oom_forecast import NOT_APPLICABLE, OomForecaster, fragmentation_note
from loratop.trainer.memory_sampler import MemorySampler

PAGE_MIN_ELEMENTS = 100_000
"""bitsandbytes pages optimizer state only for parameters with at least this many
elements (``Optimizer8bit.get_state_buffer``); smaller ones keep ordinary state."""


def batch_shape(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[int, int] | None:
    """(rows, padded length) of one forward call's batch: ``input_ids`` as a keyword or the
    first positional argument, else ``inputs_embeds``; ``None`` if neither has a batch shape
    (a packed, padding-free batch is one row of all its tokens: still right)."""
    ids = kwargs.get("input_ids")
    if ids is None and args:
        ids = args[0]
    shape = getattr(ids, "shape", None)
    if shape is None or len(shape) != 2:
        shape = getattr(kwargs.get("inputs_embeds"), "shape", None)
        if shape is None or len(shape) != 3:
            return None
    return int(shape[0]), int(shape[1])


def batch_tokens(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int | None:
    """Padded tokens (rows × padded length) of one forward call's batch (:func:`batch_shape`)."""
    shape = batch_shape(args, kwargs)
    return shape[0] * shape[1] if shape is not None else None


class BatchRecorder:
    """Padded tokens of each micro-batch the model runs, read off the model's forward call.

    Not from the data collator: the Trainer collates all of a step's micro-batches before
    the step begins, and accelerate's data loader collates one batch ahead of that, so a
    count taken at collation time belongs to a later step (on the H200 every step's
    maximum read 0). A forward pre-hook sees the batch the model actually runs, also the
    one it runs out of memory on. Evaluation passes (the model in eval mode) are left out.
    """

    def __init__(self) -> None:
        self.last_tokens = 0
        """Padded tokens of the latest micro-batch the model ran in training."""
        self.step_max_tokens = 0
        """The largest micro-batch of the current optimizer step."""
        self.shapes: deque[tuple[int, int]] = deque(maxlen=64)
        """(rows, padded length) of the latest micro-batches (do shapes repeat?)."""
        self._handle: Any = None

    def attach(self, model: Any) -> None:
        """Start watching ``model``'s forward calls (the top-level module the Trainer calls)."""
        self.detach()
        self._handle = model.register_forward_pre_hook(self._seen, with_kwargs=True)

    def detach(self) -> None:
        """Stop watching (safe to call twice)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def step_begin(self) -> None:
        """A new optimizer step: its maximum starts again."""
        self.step_max_tokens = 0

    def record(self, tokens: int) -> None:
        """One micro-batch of ``tokens`` padded tokens ran."""
        self.last_tokens = tokens
        self.step_max_tokens = max(self.step_max_tokens, tokens)

    def _seen(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not getattr(module, "training", True):
            return None
        shape = batch_shape(args, kwargs)
        if shape is not None:
            self.shapes.append(shape)
            self.record(shape[0] * shape[1])
        return None  # the call goes on unchanged


class GpuMemory(Protocol):
    """What the watch reads of the GPU the run trains on. The real adapter is
    :class:`CudaMemory`; a test without a GPU hands in a stand-in with these methods."""

    device: int
    """Torch's ordinal of the GPU (``cuda:<device>``)."""

    def reset_peak(self) -> None:
        """Start a new peak (at each step's beginning)."""
        ...

    def stats(self) -> Mapping[str, Any]:
        """Torch's allocator counters, as ``torch.cuda.memory_stats`` names them."""
        ...

    def paged_tensors(self) -> list[Any] | None:
        """The paged optimizer buffers (``None``: bitsandbytes cannot say)."""
        ...

    def spill_source(self) -> Any:
        """The exact spill source (a :class:`~loratop.core.spills.SpillSource`)."""
        ...


class CudaMemory:
    """The real adapter: torch's CUDA allocator, bitsandbytes' page manager, CUPTI.

    Args:
        device: Torch's ordinal of the GPU the run trains on (``cuda:0`` is the first GPU
            ``CUDA_VISIBLE_DEVICES`` shows, whatever NVML numbers it).
    """

    def __init__(self, device: int = 0) -> None:
        self.device = device

    def reset_peak(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(self.device)

    def stats(self) -> Mapping[str, Any]:
        import torch

        return torch.cuda.memory_stats(self.device)

    def paged_tensors(self) -> list[Any] | None:
        return paged_tensors()

    def spill_source(self) -> Any:
        from loratop.trainer.cupti_spills import CuptiUvmSource

        return CuptiUvmSource(device=self.device)


def cuda_figures(index: int) -> dict[str, int] | None:
    """Torch's allocator figures for one GPU (the memory sampler's ``torch`` row); ``peak``
    is since the current step began."""
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


def paged_tensors() -> list[Any] | None:
    """bitsandbytes' paged buffers (``cudaMallocManaged`` memory); ``None`` if it has no
    ``GlobalPageManager`` (an older or newer bitsandbytes: say so, do not guess)."""
    try:
        from bitsandbytes.functional import GlobalPageManager

        return list(GlobalPageManager.get_instance().paged_tensors)
    except Exception:
        return None


def paged_state(optimizer: Any, paged: list[Any] | None) -> dict[str, Any]:
    """Bytes and tensors of paged optimizer state, and of state that is not paged.

    Args:
        optimizer: The run's optimizer (its ``state`` is read).
        paged: The paged buffers, as bitsandbytes' ``GlobalPageManager`` lists them
            (:func:`paged_tensors`); torch's allocator never counts them. State of
            parameters under 1e5 elements is ordinary memory.
    """
    if paged is None:
        return {"available": False, "note": "bitsandbytes GlobalPageManager not found"}
    paged_ids = {id(t) for t in paged}
    paged_bytes = sum(t.numel() * t.element_size() for t in paged)
    unpaged_bytes = unpaged_tensors = small_params = 0
    state = getattr(optimizer, "state", {})
    for param, slots in state.items():
        if hasattr(param, "numel") and param.numel() < PAGE_MIN_ELEMENTS:
            small_params += 1
        for value in slots.values() if isinstance(slots, dict) else ():
            if hasattr(value, "numel") and id(value) not in paged_ids and value.numel() > 1:
                unpaged_bytes += value.numel() * value.element_size()
                unpaged_tensors += 1
    return {
        "available": True,
        "paged_bytes": int(paged_bytes),
        "paged_tensors": len(paged),
        "unpaged_bytes": int(unpaged_bytes),
        "unpaged_tensors": unpaged_tensors,
        "params_below_page_threshold": small_params,
    }


class MemoryWatch:
    """Step-boundary memory work for one run.

    Args:
        emit: The run's event emitter.
        sampler: The memory sampler (its latest sample gives NVML figures).
        recorder: The batch recorder (attached to the model by whoever trains it).
        gpu: The GPU the run trains on (:class:`CudaMemory`), or ``None`` on a CPU run.
        worst_tokens: Padded tokens of the worst batch the data can produce.
        batch_size: Rows per micro-batch.
        paged_optimizer: Whether the optimizer pages its state (else no spill can happen).
        knobs: The run's ``training`` settings (the starved-GPU alert suggests none it has).
        clock: Monotonic seconds (tests step it).
    """

    def __init__(
        self,
        emit: Callable[..., None],
        sampler: MemorySampler,
        recorder: BatchRecorder,
        gpu: GpuMemory | None,
        worst_tokens: int,
        batch_size: int,
        paged_optimizer: bool = True,
        knobs: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._sampler = sampler
        self.recorder = recorder
        self.gpu = gpu
        self.forecaster = OomForecaster(worst_tokens, batch_size)
        self._retries = 0
        self._paged_optimizer = paged_optimizer
        self.paged: dict[str, Any] | None = None
        self.spills: Any = None
        """The run's SpillCounter, from the first step on."""
        self.starved = StarvedGpu()
        self._knobs = dict(knobs or {})
        self._clock = clock
        self._began: float | None = None
        self._ended: float | None = None
        self._timing: deque[tuple[float, float]] = deque(maxlen=20)
        """(seconds between the last step's end and this one's begin, seconds of the step)."""
        self.last_risk: Any = None
        """The latest OOM forecast (every step, not only when its level changed)."""

    @property
    def device(self) -> int:
        """Torch's ordinal of the GPU the run trains on (0 on a CPU run)."""
        return self.gpu.device if self.gpu is not None else 0

    def start(self) -> None:
        """At train begin: on CPU say once that there is nothing to forecast."""
        if self.gpu is None:
            self._emit(
                ev.OOM_RISK,
                level=NOT_APPLICABLE,
                predicted_peak=None,
                available=None,
                headroom=None,
                reason="CPU run: no GPU memory to run out of",
            )

    def step_begin(self) -> None:
        self.recorder.step_begin()
        self._began = self._clock()
        if self.gpu is not None:
            self.gpu.reset_peak()

    def step_end(self, step: int, optimizer: Any) -> None:
        """Feed the forecaster; report a new risk level; account paged state once."""
        if self.paged is None and optimizer is not None:
            self._account_paged(step, optimizer)
        if self.spills is not None:
            for event in self.spills.step(step, self._sampler.last):
                self._emit_spill(event)
        now = self._clock()
        if self._began is not None and self._ended is not None and self._began >= self._ended:
            self._timing.append((self._began - self._ended, now - self._began))
        self._ended = now
        if self.gpu is None:
            return
        stats = self.gpu.stats()
        peak = int(stats.get("allocated_bytes.all.peak", 0))
        reserved = int(stats.get("reserved_bytes.all.current", 0))
        allocated = int(stats.get("allocated_bytes.all.current", 0))
        retries = int(stats.get("num_alloc_retries", 0))
        self.forecaster.observe(self.recorder.step_max_tokens, peak)
        sample = self._sampler.last or {}
        gpu = row_for_cuda(sample.get("gpus"), self.device)
        if gpu is None:
            return
        note = fragmentation_note(reserved, allocated, retries, self._retries)
        self._retries = retries
        risk = self.forecaster.forecast(gpu["total"], gpu["used"] - reserved, note)
        self.last_risk = risk or self.last_risk
        if self.forecaster.changed(risk):
            assert risk is not None
            self._emit(ev.OOM_RISK, step=step, **risk.as_event())
        self._check_starved(step, now, gpu)

    def _check_starved(self, step: int, now: float, gpu: Mapping[str, Any]) -> None:
        """The starved-GPU alert, once the GPU stayed under 30 % busy for a minute of steps."""
        mean = self.starved.step(step, now, row_busy(gpu))
        if mean is None:
            return
        waited = sum(gap for gap, _ in self._timing)
        total = waited + sum(took for _, took in self._timing)
        risk = self.last_risk
        causes = starved_causes(
            shapes=list(self.recorder.shapes),
            between_steps_share=waited / total if total > 0 else None,
            predicted_peak=risk.predicted_peak if risk is not None else None,
            available=risk.available if risk is not None else None,
            gpu_name=str(gpu.get("name") or ""),
            knobs=self._knobs,
        )
        self._emit(
            ev.ALERT,
            kind=GPU_STARVED,
            step=step,
            message=starved_message(mean, self.starved.window_s, causes),
            busy_pct=round(mean, 1),
            knobs=[cause.knob for cause in causes],
        )

    def _account_paged(self, step: int, optimizer: Any) -> None:
        """Once the optimizer exists: how much is paged, and how spills will be counted."""
        from loratop.core.spills import make_spill_counter, paged_ranges

        gpu = self.gpu
        paged = gpu.paged_tensors() if gpu is not None else paged_tensors()
        self.paged = paged_state(optimizer, paged)
        if gpu is None:
            self.paged["note"] = "CPU run: bitsandbytes keeps optimizer state unpaged"
        self.spills = make_spill_counter(
            "cuda" if gpu is not None else "cpu",
            int(self.paged.get("paged_bytes") or 0),
            paged_ranges(paged or [], self.device) if gpu is not None else [],
            device=self.device,
            paged_optimizer=self._paged_optimizer,
            cupti_factory=gpu.spill_source if gpu is not None else None,
        )
        self._emit(
            ev.PAGED_STATE, step=step, spill_method=self.spills.method, spill_reason=self.spills.reason, **self.paged
        )

    def _emit_spill(self, event: Any) -> None:
        totals = self.spills.totals()
        self._emit(ev.SPILL, **event.as_event(), total_events=totals.events, total_bytes=totals.bytes)

    def close(self, step: int) -> None:
        """However the run ended (completed, stopped, out of memory, an exception, a signal):
        drain the spill source's buffers and emit what they held, close the last spill
        cluster, stop the source, and stop reading batches. Safe to call twice."""
        self.recorder.detach()
        if self.spills is not None:
            for event in self.spills.close(step):
                self._emit_spill(event)


def rank_memory_row(rank: Any, sample: Mapping[str, Any] | None, device_kind: str | None, watch: Any) -> dict[str, Any]:
    """One rank's line in the ``ranks`` event: where it runs, its GPU (NVML and torch's peak)
    or its host RSS, its OOM level and its spills. The same for loratop's own ranks and for a
    script's under ``LoratopCallback``.

    Args:
        rank: The rank's :class:`~loratop.core.distributed.RankInfo`.
        sample: Its memory sampler's latest sample (``None`` before the first).
        device_kind: ``cuda`` or ``cpu``.
        watch: Its :class:`MemoryWatch`, or ``None`` where it has none.
    """
    import os
    import platform

    sample = sample or {}
    row: dict[str, Any] = {
        "rank": rank.rank,
        "node": rank.node_rank,
        "local_rank": rank.local_rank,
        "host": platform.node(),
        "pid": os.getpid(),
        "rss": (sample.get("host") or {}).get("rss"),
        "gpu": None,
    }
    gpu = row_for_cuda(sample.get("gpus"), rank.local_rank) if device_kind == "cuda" else None
    if gpu is not None:
        torch_figures = gpu.get("torch") or {}
        row["gpu"] = {
            k: v
            for k, v in {**gpu, "peak": torch_figures.get("peak")}.items()
            if k in ("index", "cuda_index", "name", "used", "total", "peak") and v is not None
        }
    else:
        row["gpu_note"] = sample.get("gpu_note") or ("CPU rank" if device_kind == "cpu" else "")
    row["oom_level"] = watch.forecaster.level if watch is not None and device_kind == "cuda" else None
    spills = watch.spills if watch is not None else None
    if spills is not None and spills.method != "n/a":
        totals = spills.totals()
        row["spills"], row["spill_bytes"] = totals.events, totals.bytes
    else:
        row["spills"] = row["spill_bytes"] = None
    return row
