"""Samples memory on its own thread, so readings continue between steps and during load.

Host RSS (psutil) everywhere; per GPU, NVML's used/total/free plus torch's allocator
figures when the trainer supplies them. A machine without an NVIDIA driver gets one
honest state, ``no_nvidia_gpu``, never zeros. The deep VRAM work (fragmentation,
paged state, OOM forecast) builds on this.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

import psutil

NO_NVIDIA_GPU = "no_nvidia_gpu"
NVML_OK = "ok"
NVML_ERROR = "nvml_error"


class GpuReader(Protocol):
    """Reads per-GPU memory. The real one is :class:`NvmlReader`; tests may fake NVML."""

    state: str
    """``ok``, ``no_nvidia_gpu`` or ``nvml_error``."""
    note: str
    """Why, in words, when the state is not ``ok``."""

    def read(self) -> list[dict[str, Any]]:
        """One dict per GPU: index, name, used, total, free (bytes)."""
        ...


class NvmlReader:
    """NVML through ``pynvml`` (package nvidia-ml-py)."""

    def __init__(self) -> None:
        self.state = NVML_OK
        self.note = ""
        self._handles: list[Any] = []
        self._pid = os.getpid()
        try:
            import pynvml

            self._nvml = pynvml
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            if count == 0:
                self.state, self.note = NO_NVIDIA_GPU, "NVML found no GPU"
        except ImportError:
            self.state, self.note = NO_NVIDIA_GPU, "pynvml (nvidia-ml-py) is not installed"
        except Exception as exc:  # pynvml raises NVMLError subclasses built at run time
            if type(exc).__name__ in ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded"):
                self.state, self.note = NO_NVIDIA_GPU, "no NVIDIA driver (libnvidia-ml not found)"
            else:
                self.state, self.note = NVML_ERROR, f"NVML failed: {exc}"

    def read(self) -> list[dict[str, Any]]:
        gpus = []
        for index, handle in enumerate(self._handles):
            info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            name = self._nvml.nvmlDeviceGetName(handle)
            gpu: dict[str, Any] = {
                "index": index,
                "name": name.decode() if isinstance(name, bytes) else name,
                "used": int(info.used),
                "total": int(info.total),
                "free": int(info.free),
            }
            gpu.update(self._extras(handle))
            gpus.append(gpu)
        return gpus

    def _extras(self, handle: Any) -> dict[str, Any]:
        """Utilisation, temperature, power and this process's memory, where NVML reports them."""
        nvml = self._nvml
        extras: dict[str, Any] = {}
        readers = {
            "util_pct": lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
            "temp_c": lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
            "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
        }
        for key, read in readers.items():
            # Not supported on this GPU or driver: leave it out, never 0.
            with contextlib.suppress(Exception):
                extras[key] = read()
        try:
            mine = [p for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == self._pid]
            if mine and mine[0].usedGpuMemory is not None:
                extras["process_used"] = int(mine[0].usedGpuMemory)
            else:
                extras["process_used_note"] = "not reported (inside a container NVML often sees no pids)"
        except Exception as exc:
            extras["process_used_note"] = f"not reported ({exc})"
        return extras


TorchStats = Callable[[int], "dict[str, int] | None"]
"""Given a GPU index, torch's allocator figures (allocated, reserved, peak) or ``None``."""


class MemorySampler:
    """A daemon thread that emits a ``memory`` event every ``1 / hz`` seconds.

    Args:
        emit: Called as ``emit("memory", **fields)`` (the run's :class:`EventSink`).
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
        self._gpu = gpu_reader if gpu_reader is not None else NvmlReader()
        self.torch_stats = torch_stats
        self._process = psutil.Process()
        self.last: dict[str, Any] | None = None
        """The latest sample (for OOM forecasts and the post-mortem)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loratop-memory", daemon=True)

    def sample(self) -> dict[str, Any]:
        """One reading, as the fields of a ``memory`` event."""
        vm = psutil.virtual_memory()
        fields: dict[str, Any] = {
            "host": {"rss": self._process.memory_info().rss, "total": vm.total, "available": vm.available},
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
            figures = stats(gpu["index"]) if stats else None
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
            self._emit("memory", **self.last)
            self._stop.wait(self._interval)
