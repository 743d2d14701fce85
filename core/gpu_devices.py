"""The one module that talks to NVML: which GPUs this process sees, in torch's order, and their memory.

``CUDA_VISIBLE_DEVICES`` decides which GPUs a CUDA process sees and in which order:
torch's ``cuda:i`` is the i-th *visible* device, whatever NVML (and nvidia-smi) numbers
it. On a shared box with ``CUDA_VISIBLE_DEVICES=3``, NVML's GPU 0 is another job's.
This module parses the variable once, the way CUDA does, maps each visible device to
its NVML handle, and reads memory in torch's order. The memory sampler, the OOM
forecast and the spill estimate (through the sampler's rows), ``loratop estimate`` and
the advisor all read NVML through :class:`GpuDevices`.

The rules, after CUDA's documentation ("CUDA Environment Variables"; the MIG user
guide) and nvitop's ``api/device.py``:

- Unset: every GPU, in NVML's order.
- A comma-separated list of NVML indices (``1,0``), or of UUIDs: ``GPU-<uuid>`` (a
  prefix that names one GPU is enough, as CUDA allows) or ``MIG-<uuid>``. One kind per
  list. The visible devices are enumerated in the list's order.
- CUDA stops at the first invalid entry (``0,2,-1,1`` shows 0 and 2), so an empty value,
  ``-1`` or ``NoDevFiles`` shows none. A device named twice shows none at all.
- MIG: at most one MIG instance is visible: the first ``MIG-`` entry, or else the first
  instance of the first listed GPU that is in MIG mode (GPUs not in MIG mode are then
  not visible). The pre-R470 form ``MIG-GPU-<uuid>/<gi>/<ci>`` is not understood: it
  reads as an invalid entry.

Not handled: integer indices and the unset case follow NVML's (PCI bus) order, which is
CUDA's only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; CUDA's default orders the fastest
GPU first, which differs only on a box with mixed GPU models.

Standard library only; ``pynvml`` (nvidia-ml-py) is imported when NVML is opened.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

NVML_OK = "ok"
NO_NVIDIA_GPU = "no_nvidia_gpu"
"""No driver, no NVML library, no permission, no GPU, or none visible to this process."""
NVML_ERROR = "nvml_error"
"""NVML is there but failed; the note carries its message."""

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"

_NO_GPU_ERRORS = {
    "NVMLError_LibraryNotFound": "no NVIDIA driver (libnvidia-ml not found)",
    "NVMLError_DriverNotLoaded": "no NVIDIA driver loaded",
    "NVMLError_NoPermission": "no permission to use the NVIDIA driver",
}
"""pynvml's error classes (built at run time, so matched by name) that mean "no GPU here"."""

_MIG_ENABLED = 1
"""``pynvml.NVML_DEVICE_MIG_ENABLE``."""


@dataclass(frozen=True)
class NvmlDevice:
    """One device NVML lists: a whole GPU, or a MIG instance on one."""

    index: int
    """NVML's index of the GPU (of the parent GPU, for a MIG instance): nvidia-smi's number."""
    uuid: str
    """``GPU-…`` for a whole GPU, ``MIG-…`` for a MIG instance."""
    mig_index: int | None = None
    """The instance's slot on its GPU; ``None`` for a whole GPU."""
    mig_mode: bool = False
    """A whole GPU with MIG mode on: CUDA sees its instances, not the GPU."""
    handle: Any = field(default=None, compare=False, repr=False)
    """NVML's handle."""


@dataclass(frozen=True)
class MemoryInfo:
    """NVML's view of one device's memory, in bytes."""

    used: int
    total: int
    free: int


def visible_devices(value: str | None, devices: Sequence[NvmlDevice]) -> list[NvmlDevice]:
    """The devices a CUDA process sees, in its order: position ``i`` is ``cuda:i``.

    Args:
        value: ``CUDA_VISIBLE_DEVICES``, or ``None`` when unset.
        devices: Everything NVML lists (:func:`nvml_inventory`): whole GPUs in NVML
            order, each followed by its MIG instances.

    Returns:
        The visible devices; empty when none is (see the module's rules).
    """
    whole = [d for d in devices if d.mig_index is None]
    if value is None:
        chosen = whole
    else:
        chosen = []
        kind = None
        for entry in value.split(","):
            device, entry_kind = _resolve(entry.strip(), devices)
            if device is None or kind not in (None, entry_kind):
                break  # CUDA ignores the rest of the list
            if device in chosen:
                return []
            kind = entry_kind
            chosen.append(device)
    migs = [d for d in chosen if d.mig_index is not None]
    if migs:
        return migs[:1]
    result = []
    for device in chosen:
        if not device.mig_mode:
            result.append(device)
            continue
        first = next((d for d in devices if d.mig_index is not None and d.index == device.index), None)
        if first is not None:
            return [first]
    return result


def _resolve(entry: str, devices: Sequence[NvmlDevice]) -> tuple[NvmlDevice | None, str]:
    """One entry of ``CUDA_VISIBLE_DEVICES``: the device it names (or ``None``) and its kind."""
    digits = re.match(r"\d+", entry)
    if digits:  # CUDA reads the leading digits: "1abc" is 1
        index = int(digits.group())
        return next((d for d in devices if d.mig_index is None and d.index == index), None), "index"
    if entry.startswith(("GPU-", "MIG-")):
        mig = entry.startswith("MIG-")
        named = [d for d in devices if (d.mig_index is not None) == mig and d.uuid.startswith(entry)]
        return (named[0] if len(named) == 1 else None), "uuid"
    return None, "invalid"


def nvml_inventory(nvml: Any) -> list[NvmlDevice]:
    """Every device NVML lists: each GPU in NVML order, followed by its MIG instances.

    Args:
        nvml: The ``pynvml`` module, initialised.
    """
    devices = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        mig_mode = False
        with contextlib.suppress(Exception):  # NotSupported on GPUs without MIG
            mig_mode = nvml.nvmlDeviceGetMigMode(handle)[0] == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", _MIG_ENABLED)
        devices.append(NvmlDevice(index, _text(nvml.nvmlDeviceGetUUID(handle)), mig_mode=mig_mode, handle=handle))
        if not mig_mode:
            continue
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except Exception:  # NotFound: an empty slot
                continue
            devices.append(NvmlDevice(index, _text(nvml.nvmlDeviceGetUUID(mig)), mig_index=slot, handle=mig))
    return devices


class GpuDevices:
    """NVML, opened once: the GPUs this process sees, in torch's order.

    Never raises: a machine without a usable NVIDIA GPU gets :data:`NO_NVIDIA_GPU` and
    a note saying why; another NVML failure gets :data:`NVML_ERROR` and NVML's message.

    Args:
        pid: The process whose GPU memory :meth:`read` reports (this one by default).
    """

    def __init__(self, pid: int | None = None) -> None:
        self.state = NVML_OK
        """``ok``, ``no_nvidia_gpu`` or ``nvml_error``."""
        self.note = ""
        """Why, in words, when the state is not ``ok``."""
        self.devices: list[NvmlDevice] = []
        """The visible devices; ``devices[i]`` is torch's ``cuda:i``."""
        self._pid = os.getpid() if pid is None else pid
        self._nvml: Any = None
        try:
            import pynvml
        except ImportError:
            self.state, self.note = NO_NVIDIA_GPU, "pynvml (nvidia-ml-py) is not installed"
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            self.state, self.note = _failure(exc)
            return
        self._nvml = pynvml
        try:
            everything = nvml_inventory(pynvml)
        except Exception as exc:
            self.state, self.note = _failure(exc)
            return
        value = os.environ.get(CUDA_VISIBLE_DEVICES)
        self.devices = visible_devices(value, everything)
        if not everything:
            self.state, self.note = NO_NVIDIA_GPU, "NVML found no GPU"
        elif not self.devices:
            listed = sum(1 for d in everything if d.mig_index is None)
            self.state = NO_NVIDIA_GPU
            self.note = f"{CUDA_VISIBLE_DEVICES}={value!r} leaves none of the {listed} GPU(s) visible"

    def memory(self, cuda_index: int) -> MemoryInfo:
        """Used, total and free bytes of torch's ``cuda:<cuda_index>``, as NVML counts them."""
        info = self._nvml.nvmlDeviceGetMemoryInfo(self.devices[cuda_index].handle)
        return MemoryInfo(int(info.used), int(info.total), int(info.free))

    def name(self, cuda_index: int) -> str:
        """The device's name (a MIG instance's names its profile, e.g. ``… MIG 1g.10gb``)."""
        return _text(self._nvml.nvmlDeviceGetName(self.devices[cuda_index].handle))

    def read(self) -> list[dict[str, Any]]:
        """One memory row per visible device, in torch's order.

        Each row: ``index`` (NVML's, as nvidia-smi numbers GPUs), ``cuda_index`` (torch's
        ordinal), ``mig_index`` for a MIG instance, ``name``, ``used``, ``total``, ``free``
        (bytes), and where NVML reports them ``util_pct``, ``temp_c``, ``power_w`` and
        ``process_used`` (else ``process_used_note``).
        """
        rows = []
        for cuda_index, device in enumerate(self.devices):
            memory = self.memory(cuda_index)
            row: dict[str, Any] = {"index": device.index, "cuda_index": cuda_index}
            if device.mig_index is not None:
                row["mig_index"] = device.mig_index
            row.update(name=self.name(cuda_index), used=memory.used, total=memory.total, free=memory.free)
            row.update(self._extras(device.handle))
            rows.append(row)
        return rows

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
            # Not supported on this GPU or driver (or a MIG instance): leave it out, never 0.
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

    def close(self) -> None:
        """Shut NVML down (its init is counted: other users in this process keep theirs)."""
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None


def cuda_index_of(row: Mapping[str, Any]) -> Any:
    """Torch's ordinal of a memory row.

    Rows recorded before ``cuda_index`` existed paired NVML index ``i`` with ``cuda:i``.
    """
    return row.get("cuda_index", row.get("index"))


def row_for_cuda(rows: Iterable[Mapping[str, Any]] | None, cuda_index: int) -> Mapping[str, Any] | None:
    """The memory row of torch's ``cuda:<cuda_index>``, or ``None`` if the sample has none."""
    return next((row for row in rows or () if cuda_index_of(row) == cuda_index), None)


def _failure(exc: BaseException) -> tuple[str, str]:
    """The state and note of an NVML error: "no GPU here" or NVML's own failure."""
    no_gpu = _NO_GPU_ERRORS.get(type(exc).__name__)
    if no_gpu is not None:
        return NO_NVIDIA_GPU, no_gpu
    return NVML_ERROR, f"NVML failed: {exc}"


def _text(value: Any) -> str:
    """pynvml returns ``str`` on Python 3, ``bytes`` in old releases."""
    return value.decode() if isinstance(value, bytes) else str(value)
