"""Samples memory on its own thread, so readings continue between steps and during load.

Host RSS (psutil) everywhere, and from the second sample on the CPU time the trainer got
and how busy its cores were (:class:`~loratop.trainer.cpu_share.CpuShare`); per
GPU, NVML's used/total/free plus torch's allocator figures when the trainer supplies them.
A machine without an NVIDIA driver gets one honest state, ``no_nvidia_gpu``, never zeros.
The deep VRAM work (fragmentation, paged state, OOM forecast) builds on this.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import psutil

from loratop.core import events as ev
from loratop.core.gpu_devices import NVML_ERROR, NVML_OK, GpuDevices, cuda_index_of
from loratop.trainer.cpu_share import CpuShare


class GpuReader(Protocol):
    """Reads per-GPU memory. The real one is :class:`~loratop.core.gpu_devices.GpuDevices`
    (NVML's GPUs as ``CUDA_VISIBLE_DEVICES`` shows them to torch); tests may fake NVML."""

    state: str
    """``ok``, ``no_nvidia_gpu`` or ``nvml_error``."""
    note: str
    """Why, in words, when the state is not ``ok``."""

    def read(self) -> list[dict[str, Any]]:
        """One dict per visible GPU, in torch's order: index (NVML's), cuda_index (torch's),
        name, used, total, free (bytes)."""
        ...


TorchStats = Callable[[int], "dict[str, int] | None"]
"""Given torch's ordinal of a GPU, torch's allocator figures (allocated, reserved, peak) or ``None``."""


class MemorySampler:
    """A daemon thread that emits a ``memory`` event every ``1 / hz`` seconds.

    Args:
        emit: Called as ``emit(ev.MEMORY, **fields)`` (the run's :class:`EventSink`).
        hz: Samples per second.
        gpu_reader: Per-GPU reader; the real NVML one by default.
        torch_stats: Torch allocator figures per GPU, set once torch is loaded.
    """

    def __init__(
        self,
        emit: Callable[..., None],
        hz: float,
        gpu_reader: GpuReader | None = None,
        torch_stats: TorchStats | None = None,
    ) -> None:
        self._emit = emit
        self._interval = 1.0 / hz
        self._gpu = gpu_reader if gpu_reader is not None else GpuDevices()
        self.torch_stats = torch_stats
        self._process = psutil.Process()
        self._cpu = CpuShare(self._process)
        self.last: dict[str, Any] | None = None
        """The latest sample (for OOM forecasts and the post-mortem)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loratop-memory", daemon=True)

    def sample(self) -> dict[str, Any]:
        """One reading, as the fields of a ``memory`` event."""
        vm = psutil.virtual_memory()
        host: dict[str, Any] = {"rss": self._process.memory_info().rss, "total": vm.total, "available": vm.available}
        host.update(self._cpu.read() or {})
        fields: dict[str, Any] = {
            "host": host,
            "gpu_state": self._gpu.state,
            "gpus": [],
        }
        if self._gpu.state != NVML_OK:
            fields["gpu_note"] = self._gpu.note
            return fields
        try:
            gpus = self._gpu.read()
        except Exception as exc:  # a GPU can fall off the bus mid-run; say so, keep sampling
            fields["gpu_state"], fields["gpu_note"] = NVML_ERROR, f"NVML read failed: {exc}"
            return fields
        stats = self.torch_stats
        for gpu in gpus:
            figures = stats(cuda_index_of(gpu)) if stats else None
            if figures:
                gpu["torch"] = figures
        fields["gpus"] = gpus
        return fields

    def start(self) -> None:
        """Start sampling (the first sample is taken at once)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait for the thread (one last sample is not taken)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.last = self.sample()
            self._emit(ev.MEMORY, **self.last)
            self._stop.wait(self._interval)
