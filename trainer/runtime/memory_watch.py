"""Per-step memory bookkeeping in the trainer: batch sizes, peaks, OOM risk, paged state.

:class:`BatchRecorder` wraps the data collator to learn each micro-batch's padded
token count (peak memory follows it). :class:`MemoryWatch` is called at every step
boundary: it resets torch's peak counter, feeds the OOM forecaster and reports a
level change, and accounts the paged optimizer state once the optimizer exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from loratop.trainer import events as ev
from loratop.trainer.gpu_devices import row_for_cuda
from loratop.trainer.oom_forecast import NOT_APPLICABLE, OomForecaster, fragmentation_note
from loratop.trainer.runtime.memory_sampler import MemorySampler

PAGE_MIN_ELEMENTS = 100_000
"""bitsandbytes pages optimizer state only for parameters with at least this many
elements (``Optimizer8bit.get_state_buffer``); smaller ones keep ordinary state."""


class BatchRecorder:
    """A data collator wrapper that remembers padded tokens per micro-batch."""

    def __init__(self, collator: Callable[[Any], Any]) -> None:
        self._collator = collator
        self.last_tokens = 0
        """Padded tokens (rows × padded length) of the latest micro-batch."""
        self.step_max_tokens = 0
        """The largest micro-batch of the current optimizer step."""

    def __call__(self, features: Any) -> Any:
        batch = self._collator(features)
        ids = batch.get("input_ids") if hasattr(batch, "get") else None
        if ids is not None and hasattr(ids, "shape") and len(ids.shape) == 2:
            self.last_tokens = int(ids.shape[0] * ids.shape[1])
            self.step_max_tokens = max(self.step_max_tokens, self.last_tokens)
        return batch

    @property
    def wrapped(self) -> Callable[[Any], Any]:
        """The collator this one records for."""
        return self._collator

    def __getattr__(self, name: str) -> Any:  # TRL inspects collator attributes
        return getattr(self._collator, name)


def paged_tensors() -> list[Any] | None:
    """bitsandbytes' paged buffers (``cudaMallocManaged`` memory); ``None`` if it has no
    ``GlobalPageManager`` (an older or newer bitsandbytes: say so, do not guess)."""
    try:
        from bitsandbytes.functional import GlobalPageManager

        return list(GlobalPageManager.get_instance().paged_tensors)
    except Exception:
        return None


def paged_state(optimizer: Any) -> dict[str, Any]:
    """Bytes and tensors of paged optimizer state, and of state that is not paged.

    Paged buffers are listed by bitsandbytes' ``GlobalPageManager``; torch's allocator
    never counts them. State of parameters under 1e5 elements is ordinary memory.
    """
    paged = paged_tensors()
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
        recorder: The collator wrapper.
        cuda: Whether the run is on a GPU.
        worst_tokens: Padded tokens of the worst batch the data can produce.
        batch_size: Rows per micro-batch.
        paged_optimizer: Whether the optimizer pages its state (else no spill can happen).
        device: Torch's ordinal of the GPU the run trains on (``cuda:0``: the first GPU
            ``CUDA_VISIBLE_DEVICES`` shows, whatever NVML numbers it).
        cuda_memory_stats: Torch's allocator counters of that GPU; ``torch.cuda.memory_stats``
            by default (tests stand in for CUDA here).
    """

    def __init__(
        self,
        emit: Callable[..., None],
        sampler: MemorySampler,
        recorder: BatchRecorder,
        cuda: bool,
        worst_tokens: int,
        batch_size: int,
        paged_optimizer: bool = True,
        device: int = 0,
        cuda_memory_stats: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self._emit = emit
        self._sampler = sampler
        self.recorder = recorder
        self._cuda = cuda
        self.forecaster = OomForecaster(worst_tokens, batch_size)
        self._retries = 0
        self._paged_optimizer = paged_optimizer
        self._device = device
        self._cuda_memory_stats = cuda_memory_stats or self._torch_memory_stats
        self.paged: dict[str, Any] | None = None
        self.spills: Any = None
        """The run's SpillCounter, from the first step on."""

    def start(self) -> None:
        """At train begin: on CPU say once that there is nothing to forecast."""
        if not self._cuda:
            self._emit(
                ev.OOM_RISK,
                level=NOT_APPLICABLE,
                predicted_peak=None,
                available=None,
                headroom=None,
                reason="CPU run: no GPU memory to run out of",
            )

    def step_begin(self) -> None:
        self.recorder.step_max_tokens = 0
        if self._cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self._device)

    def step_end(self, step: int, optimizer: Any) -> None:
        """Feed the forecaster; report a new risk level; account paged state once."""
        if self.paged is None and optimizer is not None:
            self._account_paged(step, optimizer)
        if self.spills is not None:
            for event in self.spills.step(step, self._sampler.last):
                self._emit_spill(event)
        if not self._cuda:
            return
        stats = self._cuda_memory_stats()
        peak = int(stats.get("allocated_bytes.all.peak", 0))
        reserved = int(stats.get("reserved_bytes.all.current", 0))
        allocated = int(stats.get("allocated_bytes.all.current", 0))
        retries = int(stats.get("num_alloc_retries", 0))
        self.forecaster.observe(self.recorder.step_max_tokens, peak)
        sample = self._sampler.last or {}
        gpu = row_for_cuda(sample.get("gpus"), self._device)
        if gpu is None:
            return
        note = fragmentation_note(reserved, allocated, retries, self._retries)
        self._retries = retries
        risk = self.forecaster.forecast(gpu["total"], gpu["used"] - reserved, note)
        if self.forecaster.changed(risk):
            assert risk is not None
            self._emit(ev.OOM_RISK, step=step, **risk.as_event())

    def _account_paged(self, step: int, optimizer: Any) -> None:
        """Once the optimizer exists: how much is paged, and how spills will be counted."""
        from loratop.trainer.runtime.cupti_spills import CuptiUvmSource
        from loratop.trainer.spills import make_spill_counter, paged_ranges

        self.paged = paged_state(optimizer)
        if not self._cuda:
            self.paged["note"] = "CPU run: bitsandbytes keeps optimizer state unpaged"
        self.spills = make_spill_counter(
            "cuda" if self._cuda else "cpu",
            int(self.paged.get("paged_bytes") or 0),
            paged_ranges(paged_tensors() or []) if self._cuda else [],
            device=self._device,
            paged_optimizer=self._paged_optimizer,
            cupti_factory=lambda: CuptiUvmSource(device=self._device),
        )
        self._emit(
            ev.PAGED_STATE, step=step, spill_method=self.spills.method, spill_reason=self.spills.reason, **self.paged
        )

    def _emit_spill(self, event: Any) -> None:
        totals = self.spills.totals()
        self._emit(ev.SPILL, **event.as_event(), total_events=totals.events, total_bytes=totals.bytes)

    def _torch_memory_stats(self) -> Mapping[str, Any]:
        import torch

        return torch.cuda.memory_stats(self._device)

    def close(self, step: int) -> None:
        """At the end of training: close the last spill cluster."""
        if self.spills is not None:
            for event in self.spills.close(step):
                self._emit_spill(event)


def rank_memory_row(rank: Any, sample: Mapping[str, Any] | None, device_kind: str | None, watch: Any) -> dict[str, Any]:
    """One rank's line in the ``ranks`` event: where it runs, its GPU (NVML and torch's peak)
    or its host RSS, its OOM level and its spills. The same for loratop's own ranks and for a
    script's under ``LoratopCallback``.

    Args:
        rank: The rank's :class:`~loratop.trainer.distributed.RankInfo`.
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
