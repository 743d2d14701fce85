"""The NVML adapter: CUDA_VISIBLE_DEVICES parsed as CUDA does, GPUs read in torch's order.

NVML is faked (``tests/fake_nvml.py``) below pynvml's own interface, so the adapter
runs unchanged: a shared box of four GPUs, each with its own used memory.
"""

from __future__ import annotations

import os
import sys

import pytest
from fake_nvml import GIB, FakeGpu, FakePynvml, four_gpus, install

from loratop.core.gpu_devices import (
    NO_NVIDIA_GPU,
    NVML_ERROR,
    NVML_OK,
    GpuDevices,
    NvmlDevice,
    row_for_cuda,
    visible_devices,
)

GPUS = four_gpus()
UUIDS = [gpu.uuid for gpu in GPUS]


def nvml_indices(monkeypatch: pytest.MonkeyPatch, visible: str | None) -> list[int]:
    """NVML's index of each visible GPU, in torch's order."""
    install(monkeypatch, FakePynvml(four_gpus()), visible)
    return [row["index"] for row in GpuDevices().read()]


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, [0, 1, 2, 3]),  # unset: every GPU, NVML's order
        ("3", [3]),
        ("1,0", [1, 0]),
        ("2, 3", [2, 3]),
        (UUIDS[2], [2]),
        ("GPU-1111", [1]),  # a unique prefix is enough
        (f"{UUIDS[3]},{UUIDS[0]}", [3, 0]),
        ("0,2,-1,1", [0, 2]),  # CUDA stops at the first invalid entry
        ("2,7", [2]),  # no GPU 7
        ("1,GPU-0000", [1]),  # one kind per list
        ("GPU-1111,1", [1]),
        ("1abc", [1]),  # CUDA reads the leading digits
    ],
)
def test_visible_gpus_in_torch_order(monkeypatch: pytest.MonkeyPatch, visible: str | None, expected: list[int]) -> None:
    assert nvml_indices(monkeypatch, visible) == expected


@pytest.mark.parametrize("visible", ["", "-1", "NoDevFiles", "7", "GPU-", "GPU-9999", "1,1", "GPU-1,GPU-1111"])
def test_nothing_visible_is_the_no_gpu_state_with_a_reason(monkeypatch: pytest.MonkeyPatch, visible: str) -> None:
    install(monkeypatch, FakePynvml(four_gpus()), visible)

    gpus = GpuDevices()

    assert (gpus.state, gpus.read()) == (NO_NVIDIA_GPU, [])
    assert gpus.note == f"CUDA_VISIBLE_DEVICES={visible!r} leaves none of the 4 GPU(s) visible"


def test_rows_carry_nvml_index_and_torch_ordinal_and_that_gpus_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePynvml(four_gpus())
    fake.gpus[1].processes = {os.getpid(): 3 * GIB, 1: 5 * GIB}
    install(monkeypatch, fake, "1,0")

    first, second = GpuDevices().read()

    assert (first["index"], first["cuda_index"], first["used"], first["total"]) == (1, 0, 2 * GIB, 150 * GIB)
    assert (second["index"], second["cuda_index"], second["used"], second["total"]) == (0, 1, 1 * GIB, 140 * GIB)
    assert first["free"] == 148 * GIB and first["name"] == "NVIDIA H200"
    assert (first["util_pct"], first["temp_c"], first["power_w"]) == (42, 55, 250.0)
    assert first["process_used"] == 3 * GIB and "process_used" not in second and second["process_used_note"]


def test_memory_and_name_by_torch_ordinal(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakePynvml(four_gpus()), "3")

    gpus = GpuDevices()

    assert gpus.memory(0).total == 170 * GIB and gpus.memory(0).used == 4 * GIB and gpus.name(0) == "NVIDIA H200"
    assert [d.uuid for d in gpus.devices] == [UUIDS[3]]


def mig_box() -> list[FakeGpu]:
    """GPU 0 in MIG mode (slot 0 empty, two instances), GPU 1 a whole GPU."""
    a = FakeGpu("MIG-aaaaaaaa-0000-1111-2222-333333333333", "NVIDIA A100 MIG 3g.40gb", total=40 * GIB)
    b = FakeGpu("MIG-bbbbbbbb-0000-1111-2222-333333333333", "NVIDIA A100 MIG 1g.10gb", total=10 * GIB)
    return [
        FakeGpu("GPU-00000000-0000-1111-2222-333333333333", "NVIDIA A100", total=80 * GIB, mig=[None, a, b]),
        FakeGpu("GPU-11111111-0000-1111-2222-333333333333", "NVIDIA A100", total=80 * GIB),
    ]


@pytest.mark.parametrize(
    ("visible", "name"),
    [
        ("MIG-bbbb", "NVIDIA A100 MIG 1g.10gb"),  # a MIG UUID (prefix)
        ("MIG-bbbb,MIG-aaaa", "NVIDIA A100 MIG 1g.10gb"),  # one MIG instance at most
        (None, "NVIDIA A100 MIG 3g.40gb"),  # a GPU in MIG mode stands for its first instance
        ("1,0", "NVIDIA A100 MIG 3g.40gb"),  # ...and hides the GPUs not in MIG mode
    ],
)
def test_mig(monkeypatch: pytest.MonkeyPatch, visible: str | None, name: str) -> None:
    install(monkeypatch, FakePynvml(mig_box()), visible)

    (row,) = GpuDevices().read()

    assert (row["index"], row["cuda_index"], row["name"]) == (0, 0, name)
    assert row["mig_index"] == (2 if "1g" in name else 1)


def test_whole_gpus_only_by_index() -> None:
    gpu = NvmlDevice(0, "GPU-0", mig_mode=True)
    instance = NvmlDevice(0, "MIG-0", mig_index=0)
    other = NvmlDevice(1, "GPU-1")

    assert visible_devices("1", [gpu, instance, other]) == [other]
    assert visible_devices("0", [gpu, other]) == []  # MIG mode on, no instance: nothing to run on


@pytest.mark.parametrize(
    ("error", "state", "note"),
    [
        ("NVMLError_LibraryNotFound", NO_NVIDIA_GPU, "no NVIDIA driver (libnvidia-ml not found)"),
        ("NVMLError_DriverNotLoaded", NO_NVIDIA_GPU, "no NVIDIA driver loaded"),
        ("NVMLError_NoPermission", NO_NVIDIA_GPU, "no permission to use the NVIDIA driver"),
        ("NVMLError_GpuIsLost", NVML_ERROR, "NVML failed: GPU is lost"),
    ],
)
def test_error_kinds(monkeypatch: pytest.MonkeyPatch, error: str, state: str, note: str) -> None:
    install(monkeypatch, FakePynvml(four_gpus(), init_error=error), None)

    gpus = GpuDevices()

    assert (gpus.state, gpus.note, gpus.read()) == (state, note, [])


def test_without_pynvml_or_gpus_is_the_no_gpu_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert GpuDevices().state == NO_NVIDIA_GPU

    install(monkeypatch, FakePynvml([]), None)
    gpus = GpuDevices()
    assert (gpus.state, gpus.note) == (NO_NVIDIA_GPU, "NVML found no GPU")


def test_close_shuts_nvml_down_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install(monkeypatch, FakePynvml(four_gpus()), "0")
    gpus = GpuDevices()
    assert gpus.state == NVML_OK and fake.open == 1

    gpus.close()
    gpus.close()

    assert fake.open == 0


def test_rows_are_found_by_torch_ordinal() -> None:
    rows = [{"index": 3, "cuda_index": 0}, {"index": 1, "cuda_index": 1}]

    assert row_for_cuda(rows, 0) == {"index": 3, "cuda_index": 0}
    assert row_for_cuda(rows, 1) == {"index": 1, "cuda_index": 1}
    assert row_for_cuda(rows, 3) is None and row_for_cuda(None, 0) is None
    assert row_for_cuda([{"index": 0}], 0) == {"index": 0}, "older rows: NVML index i was cuda:i"
