"""The memory sampler: honest GPU states, real host numbers, torch figures merged per GPU."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fake_nvml import GIB, FakePynvml, four_gpus, install

from loratop.core.gpu_devices import NO_NVIDIA_GPU, NVML_ERROR, NVML_OK, GpuDevices
from loratop.trainer.memory_sampler import MemorySampler


class FakeNvml:
    """Stands in for NVML (hardware CI lacks) behind the same interface as GpuDevices."""

    def __init__(self, state: str = NVML_OK, gpus: list[dict[str, Any]] | None = None, fail: bool = False) -> None:
        self.state = state
        self.note = "" if state == NVML_OK else "fake says no"
        self._gpus = gpus or []
        self._fail = fail

    def read(self) -> list[dict[str, Any]]:
        if self._fail:
            raise RuntimeError("GPU has fallen off the bus")
        return [dict(g) for g in self._gpus]


def test_real_nvml_on_a_machine_without_nvidia_says_so() -> None:
    reader = GpuDevices()
    # This test runs on CI without a GPU; on a GPU box the state is ok and GPUs are listed.
    if reader.state == NVML_OK:
        assert reader.read(), "NVML ok but no GPU listed"
    else:
        assert reader.state in (NO_NVIDIA_GPU, NVML_ERROR) and reader.note


def test_no_gpu_is_a_state_not_zeros() -> None:
    sample = MemorySampler(lambda *a, **k: None, 2.0, gpu_reader=FakeNvml(NO_NVIDIA_GPU)).sample()
    assert sample["gpu_state"] == NO_NVIDIA_GPU and sample["gpus"] == [] and sample["gpu_note"]
    assert sample["host"]["rss"] > 0 and sample["host"]["total"] >= sample["host"]["available"] > 0


def test_gpu_figures_merge_nvml_and_torch() -> None:
    gpus = [{"index": 0, "name": "H200", "used": 5 << 30, "total": 140 << 30, "free": 135 << 30}]
    torch_stats = {0: {"allocated": 3 << 30, "reserved": 4 << 30, "peak": 3 << 30}}
    sampler = MemorySampler(lambda *a, **k: None, 2.0, gpu_reader=FakeNvml(gpus=gpus), torch_stats=torch_stats.get)
    sample = sampler.sample()
    assert sample["gpu_state"] == NVML_OK
    assert sample["gpus"][0]["used"] == 5 << 30 and sample["gpus"][0]["torch"]["reserved"] == 4 << 30


def test_a_failing_nvml_read_is_reported_and_sampling_goes_on() -> None:
    sampler = MemorySampler(lambda *a, **k: None, 2.0, gpu_reader=FakeNvml(gpus=[{}], fail=True))
    sample = sampler.sample()
    assert sample["gpu_state"] == NVML_ERROR and "fallen off" in sample["gpu_note"]
    assert sample["host"]["rss"] > 0


def test_the_thread_emits_memory_events_until_stopped() -> None:
    seen: list[dict[str, Any]] = []
    emitters: set[threading.Thread] = set()

    def emit(kind: str, **fields: Any) -> None:
        emitters.add(threading.current_thread())
        seen.append({"type": kind, **fields})

    sampler = MemorySampler(emit, 50.0, FakeNvml(NO_NVIDIA_GPU))
    sampler.start()
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    sampler.stop()
    assert len(seen) >= 3 and all(e["type"] == "memory" for e in seen)
    # No samples after stop(): it returned with every thread that ever emitted one ended.
    assert emitters and not any(thread.is_alive() for thread in emitters)


# ---------------------------------------------------------------- CUDA_VISIBLE_DEVICES, through the real adapter


@pytest.mark.parametrize(
    ("visible", "rows"),
    [
        (None, [(0, 0), (1, 1), (2, 2), (3, 3)]),
        ("", []),
        ("3", [(3, 0)]),
        (four_gpus()[2].uuid, [(2, 0)]),
        ("1,0", [(1, 0), (0, 1)]),
    ],
)
def test_memory_rows_are_the_visible_gpus_in_torch_order(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, rows: list[tuple[int, int]]
) -> None:
    install(monkeypatch, FakePynvml(four_gpus()), visible)
    # torch's figures are asked for by torch's ordinal: cuda:0 reserved 10 GiB, cuda:1 20 GiB
    torch_stats = {0: {"reserved": 10 * GIB}, 1: {"reserved": 20 * GIB}}

    sample = MemorySampler(lambda *a, **k: None, 2.0, torch_stats=torch_stats.get).sample()

    assert [(g["index"], g["cuda_index"]) for g in sample["gpus"]] == rows
    for gpu in sample["gpus"]:
        assert gpu["used"] == (gpu["index"] + 1) * GIB, "NVML figures of that GPU"
        assert gpu.get("torch") == torch_stats.get(gpu["cuda_index"]), "torch figures of that GPU"
    assert sample["gpu_state"] == (NVML_OK if rows else NO_NVIDIA_GPU)
