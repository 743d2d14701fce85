"""A stand-in for ``pynvml`` (NVML is hardware CI lacks), with the calls loratop makes.

Installed as ``sys.modules["pynvml"]``, so the real adapter (:mod:`core.gpu_devices`)
runs unchanged on top of it: the same function names, return shapes and error classes
(by name) as nvidia-ml-py.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

GIB = 2**30


@dataclass
class FakeGpu:
    """One device: a whole GPU, or (in ``mig``) a MIG instance on one."""

    uuid: str
    name: str = "NVIDIA H200"
    total: int = 140 * GIB
    used: int = 1 * GIB
    mig: list[FakeGpu | None] | None = None
    """MIG mode on: its instance slots (``None``: an empty slot). ``None``: no MIG mode."""
    processes: dict[int, int] = field(default_factory=dict)
    """pid → bytes used."""
    util: int = 42
    """NVML's utilisation (busy %) of the last sample period."""


class NVMLError(Exception):
    """pynvml's base error."""


def _error(name: str, message: str) -> type[NVMLError]:
    def __str__(self: NVMLError) -> str:  # noqa: N807 - pynvml's errors print their kind
        return message

    return type(name, (NVMLError,), {"__str__": __str__})


class FakePynvml(types.ModuleType):
    """The ``pynvml`` module over a list of fake GPUs, in NVML order.

    Args:
        gpus: The GPUs NVML lists.
        init_error: The name of the error class ``nvmlInit`` raises (e.g.
            ``NVMLError_LibraryNotFound``), or ``None``.
    """

    NVML_TEMPERATURE_GPU = 0
    NVML_DEVICE_MIG_ENABLE = 1
    NVMLError = NVMLError
    NVMLError_LibraryNotFound = _error("NVMLError_LibraryNotFound", "NVML Shared Library Not Found")
    NVMLError_DriverNotLoaded = _error("NVMLError_DriverNotLoaded", "Driver Not Loaded")
    NVMLError_NoPermission = _error("NVMLError_NoPermission", "Insufficient Permissions")
    NVMLError_NotFound = _error("NVMLError_NotFound", "Not Found")
    NVMLError_NotSupported = _error("NVMLError_NotSupported", "Not Supported")
    NVMLError_InvalidArgument = _error("NVMLError_InvalidArgument", "Invalid Argument")
    NVMLError_GpuIsLost = _error("NVMLError_GpuIsLost", "GPU is lost")

    def __init__(self, gpus: list[FakeGpu], init_error: str | None = None) -> None:
        super().__init__("pynvml")
        self.gpus = gpus
        self.init_error = init_error
        self.open = 0
        """nvmlInit calls not yet shut down."""

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if self.init_error:
            raise getattr(self, self.init_error)()
        self.open += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.open -= 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        if not 0 <= index < len(self.gpus):
            raise self.NVMLError_InvalidArgument()
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:  # noqa: N802
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:  # noqa: N802
        return handle.name

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> Any:  # noqa: N802
        return types.SimpleNamespace(used=handle.used, total=handle.total, free=handle.total - handle.used)

    def nvmlDeviceGetMigMode(self, handle: FakeGpu) -> list[int]:  # noqa: N802
        if handle.mig is None:
            raise self.NVMLError_NotSupported()
        return [1, 1]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeGpu) -> int:  # noqa: N802
        return len(handle.mig or [])

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeGpu, index: int) -> FakeGpu:  # noqa: N802
        instance = (handle.mig or [])[index]
        if instance is None:
            raise self.NVMLError_NotFound()
        return instance

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> Any:  # noqa: N802
        return types.SimpleNamespace(gpu=handle.util, memory=10)

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:  # noqa: N802
        return 55

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:  # noqa: N802
        return 250_000  # milliwatts

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list[Any]:  # noqa: N802
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in handle.processes.items()]


def four_gpus() -> list[FakeGpu]:
    """A shared box: four H200s, each its own size and use: GPU n has (140 + 10n) GiB, (n + 1) GiB used."""
    return [
        FakeGpu(f"GPU-{n}{n}{n}{n}aaaa-0000-1111-2222-33333333333{n}", used=(n + 1) * GIB, total=(140 + 10 * n) * GIB)
        for n in range(4)
    ]


def install(monkeypatch: pytest.MonkeyPatch, fake: FakePynvml, visible: str | None) -> FakePynvml:
    """Make ``import pynvml`` give ``fake`` and set (or unset) ``CUDA_VISIBLE_DEVICES``."""
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    return fake
