"""The GPU check's verdicts (scripts/gpu_check.py), on CPU: each criterion of issue 10 judged
from a run's events, written and read back through the real protocol. The GPU run that
feeds them real figures is scripts/gpu_check.sh on a GPU box (docs/gpu-check.md)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from loratop.core import events as ev
from loratop.trainer.event_sink import EventSink
from tests.conftest import RECORDED_RUNS, REPO

GIB = 1024**3


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gc = _load_script()


def _gpu(used: float, reserved: float, allocated: float = 0.0) -> dict[str, Any]:
    return {
        "index": 0, "name": "NVIDIA H200", "used": int(used * GIB), "total": 140 * GIB, "free": 0,
        "torch": {"allocated": int(allocated * GIB), "reserved": int(reserved * GIB), "peak": int(allocated * GIB)},
    }  # fmt: skip


def _write(
    tmp_path: Path, script: list[tuple[str, dict[str, Any]]], garble: bool = False
) -> tuple[list[dict[str, Any]], int]:
    sink = EventSink(tmp_path / "events.jsonl")
    for kind, fields in script:
        sink.emit(kind, **fields)
    sink.close()
    if garble:
        with open(tmp_path / "events.jsonl", "ab") as fh:
            fh.write(b'{"v":1,"seq":99,"t":1,"type":"step"\n')
    return ev.read_events(str(tmp_path / "events.jsonl"))


def _gpu_run(
    *,
    spills: int = 2,
    method: str = "exact",
    rise_at: int | None = 16,
    oom: bool = True,
    post_mortem: bool = True,
    seen_tokens: int = 4096,
) -> list[tuple[str, dict[str, Any]]]:
    """A GPU run's events as the trainer emits them: steps, memory samples, paged state, the
    ballast after step 15, spills, an OOM-risk rise, and an OOM at step 21."""
    script: list[tuple[str, dict[str, Any]]] = [
        ("memory", {"host": {"rss": GIB}, "gpu_state": "ok", "gpus": [_gpu(1.0, 0.0)]}),
        ("oom_risk", {"step": 1, "level": "ok", "predicted_peak": 8 * GIB, "available": 139 * GIB, "headroom": 1,
                      "reason": "fits", "seen_tokens": 4096}),
    ]  # fmt: skip
    for step in range(1, 22):
        script.append(("step", {"step": step, "loss": 2.0, "tokens": step * 4096}))
        if step == 1:
            script.append(("paged_state", {"step": 1, "spill_method": method, "spill_reason": "CUPTI counters",
                                           "paged_bytes": GIB // 2, "paged_tensors": 308}))  # fmt: skip
        gpu = _gpu(12.0, 10.0, 8.0) if step <= 15 else _gpu(139.5, 138.0, 8.0)  # the ballast came after 15
        script.append(("memory", {"host": {"rss": GIB}, "gpu_state": "ok", "gpus": [gpu]}))
        if step == 17 and spills:
            for i in range(spills):
                script.append(("spill", {"step": 17, "bytes": 256 * 1024**2, "method": method, "total_events": i + 1}))
        if rise_at is not None and step == rise_at:
            script.append(("oom_risk", {"step": rise_at, "level": "danger", "predicted_peak": 139 * GIB,
                                        "available": 139 * GIB, "headroom": 0, "reason": "ballast",
                                        "seen_tokens": seen_tokens}))  # fmt: skip
    error: dict[str, Any] = {"message": "OutOfMemoryError: CUDA out of memory", "traceback": []}
    if post_mortem:
        error.update(step=21, batch_tokens=4096, last_memory={}, suggestions=["lower the batch", "shorter rows"])
    script.append(("run_finished", {"status": "oom" if oom else "completed", "error": error if oom else None}))
    if rise_at is not None and rise_at > 21:  # a "rise" logged after the run ended
        script.append(("oom_risk", {"step": rise_at, "level": "danger", "reason": "late"}))
    return script


def test_a_healthy_gpu_run_passes_every_memory_check(tmp_path: Path) -> None:
    events, skipped = _write(tmp_path, _gpu_run())
    checks = [
        gc.check_nvml_vs_torch(events, ballast_step=15),
        gc.check_spills(events),
        gc.check_risk_before_oom(events, ballast_step=15),
        gc.check_post_mortem(events, skipped, forced=True),
    ]
    assert [c.result for c in checks] == ["PASS"] * 4, [c.line() for c in checks]
    # The difference is explained on the steady sample before the ballast: 12 − 10 GiB, 0.5 paged.
    assert "NVML − reserved = 2.00 GiB" in checks[0].why and "≥ 1.50 GiB is the CUDA context" in checks[0].why
    assert "2 spill events at steps 17, 17, 512.0 MiB evicted" in checks[1].why and "exact (CUPTI)" in checks[1].why
    assert "4 steps trained after the first" in checks[1].why
    assert "danger at step 16" in checks[2].why and "before the OOM" in checks[2].why
    assert "largest batch seen 4,096 tokens" in checks[2].why
    assert "status oom at step 21" in checks[3].why


def test_nvml_below_torch_reserved_fails(tmp_path: Path) -> None:
    script = _gpu_run()
    script.insert(0, ("memory", {"host": {"rss": 1}, "gpu_state": "ok", "gpus": [_gpu(5.0, 6.0)]}))
    events, _ = _write(tmp_path, script)
    check = gc.check_nvml_vs_torch(events, ballast_step=15)
    assert check.result == "FAIL" and "1/23 samples have NVML used < torch reserved" in check.why


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [({"method": "estimated"}, "spills counted by method 'estimated'"), ({"spills": 0}, "no spill event")],
)
def test_estimated_or_absent_spills_fail(tmp_path: Path, kwargs: dict[str, Any], expected: str) -> None:
    events, _ = _write(tmp_path, _gpu_run(**kwargs))
    check = gc.check_spills(events)
    assert check.result == "FAIL" and expected in check.why


def test_a_forecast_that_saw_no_batch_fails_even_when_the_level_rose(tmp_path: Path) -> None:
    """The H200's first run: the level rose on the ballast alone while every batch read 0 tokens."""
    events, _ = _write(tmp_path, _gpu_run(seen_tokens=0))
    check = gc.check_risk_before_oom(events, ballast_step=15)
    assert check.result == "FAIL" and "1 forecasts saw no batch" in check.why


def test_a_spill_with_no_training_after_it_fails(tmp_path: Path) -> None:
    """The check is that the optimizer paged its state back in and trained on, not only that
    something was evicted on the way out."""
    script = [e for e in _gpu_run() if not (e[0] == "step" and e[1]["step"] > 17)]
    events, _ = _write(tmp_path, script)
    check = gc.check_spills(events)
    assert check.result == "FAIL" and "no step trained after the first spill" in check.why


@pytest.mark.parametrize(("rise_at", "why"), [(None, "none rose"), (10, "none rose"), (30, "none rose")])
def test_a_risk_that_never_rises_or_rises_too_early_or_late_fails(
    tmp_path: Path, rise_at: int | None, why: str
) -> None:
    """Before the ballast (step 10) proves nothing; after the OOM (30) is too late."""
    events, _ = _write(tmp_path, _gpu_run(rise_at=rise_at))
    check = gc.check_risk_before_oom(events, ballast_step=15)
    assert check.result == "FAIL" and why in check.why


def test_a_post_mortem_needs_its_fields_and_intact_events(tmp_path: Path) -> None:
    for name in "abc":
        (tmp_path / name).mkdir()
    events, skipped = _write(tmp_path / "a", _gpu_run(post_mortem=False))
    check = gc.check_post_mortem(events, skipped, forced=True)
    assert check.result == "FAIL" and "missing ['step', 'batch_tokens', 'last_memory', 'suggestions']" in check.why
    events, skipped = _write(tmp_path / "b", _gpu_run(), garble=True)
    check = gc.check_post_mortem(events, skipped, forced=True)
    assert check.result == "FAIL" and "1 garbled" in check.why
    events, skipped = _write(tmp_path / "c", _gpu_run(oom=False))
    assert gc.check_post_mortem(events, skipped, forced=True).result == "FAIL"
    assert gc.check_post_mortem(events, skipped, forced=False).result == "n/a"


def test_a_cpu_run_is_not_applicable_never_a_made_up_pass() -> None:
    events, skipped = ev.read_events(str(RECORDED_RUNS / "tiny-r8" / "events.jsonl"))
    checks = [
        gc.check_nvml_vs_torch(events),
        gc.check_spills(events),
        gc.check_risk_before_oom(events, None),
        gc.check_post_mortem(events, skipped, forced=False),
    ]
    assert [c.result for c in checks] == ["n/a"] * 4, [c.line() for c in checks]
    assert "no NVIDIA GPU" in checks[0].why and "0 garbled, 0 seq gaps" in checks[3].why


def test_throughput_verdict_takes_medians_of_interleaved_runs() -> None:
    runs = [gc.Throughput("loratop", v, 30) for v in (980.0, 985.0, 1200.0)]
    runs += [gc.Throughput("bare", v, 30) for v in (1000.0, 1005.0, 800.0)]
    verdict = gc.ThroughputVerdict(runs)
    check = verdict.check(on_gpu=True, pairs=3)
    assert check.result == "FAIL" and "0.985×" in check.why  # medians 985 / 1000, not the 1200 outlier
    verdict.runs[1] = gc.Throughput("loratop", 995.0, 30)  # median 995 / 1000
    assert verdict.check(on_gpu=True, pairs=3).result == "PASS"
    assert verdict.check(on_gpu=True, pairs=2).result == "FAIL"  # at least 3 pairs
    cpu = verdict.check(on_gpu=False, pairs=3)
    assert cpu.result == "n/a" and "not a measurement" in cpu.why


def test_tokens_per_second_leaves_out_the_warm_up() -> None:
    # 5 slow warm-up steps (1 s each), then 10 steps of 1000 tokens in 0.5 s each.
    marks = [(float(i), i * 1000) for i in range(6)]
    marks += [(5.0 + 0.5 * i, 5000 + 1000 * i) for i in range(1, 11)]
    assert gc.tokens_per_s(marks, warmup=5) == pytest.approx(2000.0)
    assert gc.tokens_per_s(marks[:3], warmup=5) == pytest.approx(1000.0)  # too short: from the first mark


# -- the squeeze that makes the driver evict paged state (scripts/gpu_pressure.py) ---------

gp = importlib.import_module("gpu_pressure")  # scripts/ is on sys.path once gpu_check is loaded
MIB = 1024**2


class FakeDevice:
    """A GPU's memory as the driver manages it: plain allocations take free memory first, then
    (when ``evicts``) managed pages that are resident, which move to the host (the PMA
    eviction the UVM driver does for the resource manager's allocations)."""

    def __init__(self, total: int, used: int, managed: int, evicts: bool = True) -> None:
        self.total, self.used, self.managed_resident, self.evicts = total, used, managed, evicts
        self.evicted = 0
        self.allocations: dict[int, int] = {}
        self._next = 1

    def free_bytes(self) -> int:
        return self.total - self.used - self.managed_resident - sum(self.allocations.values())

    def alloc(self, size: int) -> int | None:
        short = size - self.free_bytes()
        if short > 0:
            if not self.evicts or short > self.managed_resident:
                return None
            self.managed_resident -= short
            self.evicted += short
        self.allocations[self._next] = size
        self._next += 1
        return self._next - 1

    def release(self, pointer: int) -> None:
        del self.allocations[pointer]


def test_a_squeeze_fills_to_full_pushes_the_paged_bytes_past_it_and_gives_back_room() -> None:
    device = FakeDevice(total=140 * GIB, used=20 * GIB + 3 * MIB, managed=96 * MIB)
    squeeze = gp.Squeeze(device)
    result = squeeze.squeeze(evict=96 * MIB, margin=512 * MIB)
    assert device.evicted == 96 * MIB - MIB, "what was free (1 MiB under a 2 MiB piece) plus evictions"
    assert result.pushed == result.asked == 96 * MIB
    assert 608 * MIB <= result.free_after < 610 * MIB, "the push and the 512 MiB margin are free again"
    assert device.managed_resident == MIB, "the 1 MiB the push did not need to evict"
    assert squeeze.held_bytes == 140 * GIB - 20 * GIB - 3 * MIB - MIB - result.free_after
    assert "pushed 96 of 96 MiB past full: the driver made room" in result.line(15, squeeze.held_bytes)
    # Training pages its state back in (96 MiB of the free room), and the next squeeze evicts it again.
    device.managed_resident += 96 * MIB - MIB
    device.evicted = 0
    again = squeeze.squeeze(evict=96 * MIB, margin=512 * MIB)
    assert again.pushed == 96 * MIB and device.evicted > 90 * MIB
    squeeze.release_all()
    assert device.allocations == {} and squeeze.held_bytes == 0


def test_a_driver_that_evicts_nothing_is_reported_not_assumed() -> None:
    device = FakeDevice(total=80 * GIB, used=GIB, managed=96 * MIB, evicts=False)
    squeeze = gp.Squeeze(device)
    result = squeeze.squeeze(evict=96 * MIB, margin=512 * MIB)
    assert result.pushed == 0 and device.evicted == 0 and device.managed_resident == 96 * MIB
    assert "refused: the driver evicted nothing" in result.line(15, squeeze.held_bytes)


def test_taking_the_rest_leaves_nothing_free() -> None:
    device = FakeDevice(total=80 * GIB, used=GIB, managed=96 * MIB)
    squeeze = gp.Squeeze(device)
    squeeze.take_the_rest(evict=96 * MIB)
    assert device.free_bytes() == 0 and device.managed_resident == 0


def test_the_squeezes_come_after_the_ballast_step_and_stop_before_the_forced_oom() -> None:
    assert [s for s in range(1, 41) if gc.squeeze_due(s, 15, 5, 35)] == [15, 20, 25, 30]
    assert [s for s in range(1, 41) if gc.squeeze_due(s, 15, 0, 35)] == [15]
    assert [s for s in range(1, 41) if gc.squeeze_due(s, 15, 10, 0)] == [15, 25, 35]
