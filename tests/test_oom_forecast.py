"""The OOM forecaster, with figures worked out by hand in each test."""

from __future__ import annotations

from typing import Any

import pytest
from fake_cuda import FakeCudaMemory
from fake_nvml import FakePynvml, four_gpus, install

from loratop.core import events as ev
from loratop.core.oom_forecast import (
    DANGER,
    EXPANDABLE_SEGMENTS,
    GIB,
    OK,
    WATCH,
    OomForecaster,
    fit_peaks,
    fragmentation_note,
    worst_batch_tokens,
)
from loratop.trainer.memory_sampler import MemorySampler
from loratop.trainer.memory_watch import BatchRecorder, MemoryWatch


def test_worst_batch_is_batch_size_rows_at_the_longest_truncated_length() -> None:
    assert worst_batch_tokens([120, 900, 300], batch_size=4, max_seq_length=2048) == 4 * 900
    assert worst_batch_tokens([120, 9000, 300], batch_size=4, max_seq_length=2048) == 4 * 2048
    assert worst_batch_tokens([], 4, 2048) == 0


def test_fit_exact_line() -> None:
    fit = fit_peaks([(100, 1000), (200, 2000), (300, 3000)])
    assert fit is not None
    assert (fit.base, fit.per_token, fit.margin) == pytest.approx((0.0, 10.0, 0.0))
    assert fit.predict(400) == pytest.approx(4000.0)


def test_fit_is_an_upper_envelope() -> None:
    # mean x 200, mean y 6100/3; sxx = 20000; sxy = (-100)(-2800/3) + 0 + (100)(2900/3) = 190000
    # slope 9.5; base 6100/3 - 1900 = 400/3; residuals +50/3, -100/3, +50/3 -> margin 50/3
    fit = fit_peaks([(100, 1100), (200, 2000), (300, 3000)])
    assert fit is not None
    assert fit.per_token == pytest.approx(9.5)
    assert fit.base == pytest.approx(400 / 3)
    assert fit.margin == pytest.approx(50 / 3)
    assert fit.predict(400) == pytest.approx(400 / 3 + 3800 + 50 / 3)  # = 3950
    assert fit_peaks([(100, 5), (100, 6)]) is None, "no slope from one token count"


def _forecaster_with(points: list[tuple[int, int]], worst: int) -> OomForecaster:
    forecaster = OomForecaster(worst_tokens=worst, batch_size=4)
    for tokens, peak in points:
        forecaster.observe(tokens, peak)
    return forecaster


def test_levels_against_the_memory_torch_can_have() -> None:
    # peak = 2 GiB + 1 MiB per token; worst batch 4 x 2048 = 8192 tokens -> 2 GiB + 8 GiB = 10 GiB
    mib = 1024**2
    points = [(t, 2 * GIB + t * mib) for t in (1000, 2000, 3000)]
    forecaster = _forecaster_with(points, worst=8192)
    # 16 GiB GPU, 1 GiB not torch's -> 15 GiB available; 10/15 = 0.67 -> ok
    risk = forecaster.forecast(16 * GIB, 1 * GIB)
    assert risk is not None and risk.level == OK
    assert risk.predicted_peak == 10 * GIB and risk.available == 15 * GIB and risk.headroom == 5 * GIB
    assert "longest batch ahead: 4 × 2,048 tokens" in risk.reason
    assert "predicted peak 10.0 GiB of 15.0 GiB available" in risk.reason
    # 12 GiB GPU, 1 GiB not torch's -> 11 GiB; 10/11 = 0.91 -> watch
    assert forecaster.forecast(12 * GIB, 1 * GIB).level == WATCH  # type: ignore[union-attr]
    # 11 GiB GPU -> 10 GiB available; 10/10 = 1.0 -> danger
    assert forecaster.forecast(11 * GIB, 1 * GIB).level == DANGER  # type: ignore[union-attr]


def test_no_forecast_before_three_steps_and_level_changes_reported_once() -> None:
    forecaster = _forecaster_with([(100, 1000), (200, 2000)], worst=400)
    assert forecaster.forecast(10**6, 0) is None
    forecaster.observe(300, 3000)
    risk = forecaster.forecast(10**6, 0)
    assert forecaster.changed(risk) and not forecaster.changed(forecaster.forecast(10**6, 0))
    assert forecaster.changed(forecaster.forecast(4100, 0))  # predicted 4000 of 4100 = 97.6% -> danger


def test_constant_token_counts_fall_back_to_the_largest_seen_peak() -> None:
    forecaster = _forecaster_with([(2048, 5 * GIB), (2048, 6 * GIB), (2048, 5 * GIB)], worst=2048)
    risk = forecaster.forecast(8 * GIB, 0)
    assert risk is not None and risk.predicted_peak == 6 * GIB and risk.level == OK  # 6/8 = 0.75
    assert "every batch so far had 2,048 tokens" in risk.reason


def test_fragmentation_note() -> None:
    assert fragmentation_note(reserved=10 * GIB, allocated=9 * GIB, retries=0, previous_retries=0) is None
    note = fragmentation_note(reserved=10 * GIB, allocated=6 * GIB, retries=0, previous_retries=0)
    assert note is not None and "4.0 GiB reserved but unused" in note and EXPANDABLE_SEGMENTS in note
    rising = fragmentation_note(reserved=10 * GIB, allocated=10 * GIB, retries=3, previous_retries=1)
    assert rising is not None and "retries rising (3)" in rising


def test_batch_recorder_and_paged_state_on_a_real_bitsandbytes_optimizer() -> None:
    import bitsandbytes as bnb
    import torch

    from loratop.trainer.memory_watch import BatchRecorder, paged_state, paged_tensors

    model = torch.nn.Embedding(10, 4)
    recorder = BatchRecorder()
    recorder.attach(model)
    model(torch.zeros(3, 37, dtype=torch.long))
    model(input=torch.zeros(1, 37, dtype=torch.long))  # a batch under another name: not counted
    model(torch.zeros(1, 37, dtype=torch.long))
    assert recorder.last_tokens == 37 and recorder.step_max_tokens == 3 * 37
    model.eval()
    model(torch.zeros(8, 99, dtype=torch.long))  # an evaluation pass is not a training batch
    assert recorder.step_max_tokens == 3 * 37
    recorder.detach()
    recorder.detach()

    big = torch.nn.Parameter(torch.randn(400, 300))  # 120,000 elements: paged on a GPU
    small = torch.nn.Parameter(torch.randn(10, 10))
    optimizer = bnb.optim.PagedAdamW8bit([big, small], lr=1e-3)
    (big.sum() + small.sum()).backward()
    optimizer.step()
    state = paged_state(optimizer, paged_tensors())
    # On CPU bitsandbytes falls back to ordinary state: nothing is paged, all of it counted as unpaged.
    assert state["available"] and state["paged_bytes"] == 0 and state["paged_tensors"] == 0
    assert state["params_below_page_threshold"] == 1
    assert state["unpaged_bytes"] >= 2 * 120_000  # two 8-bit Adam states for the big one


# ---------------------------------------------------------------- the GPU the forecast reads


@pytest.mark.parametrize(
    ("visible", "nvml_index"), [(None, 0), ("3", 3), (four_gpus()[2].uuid, 2), ("GPU-1111", 1), ("1,0", 1)]
)
def test_the_forecast_reads_the_gpu_the_run_trains_on(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, nvml_index: int
) -> None:
    """cuda:0 is the first visible GPU, not NVML's GPU 0 (another job's, on a shared box)."""
    install(monkeypatch, FakePynvml(four_gpus()), visible)
    sampler = MemorySampler(lambda *a, **k: None, 2.0)  # the real NVML adapter, over the fake
    recorder = BatchRecorder()
    # CUDA is hardware CI lacks: torch's allocator counters of cuda:0, 1 GiB reserved
    gpu = FakeCudaMemory(base=GIB, per_token=1024**2, reserved=GIB)
    emitted: list[tuple[str, dict[str, Any]]] = []
    watch = MemoryWatch(
        lambda kind, **fields: emitted.append((kind, fields)),
        sampler,
        recorder,
        gpu,
        worst_tokens=4000,
        batch_size=1,
    )
    for step, tokens in enumerate((1000, 2000, 3000), start=1):
        watch.step_begin()
        recorder.record(tokens)
        gpu.peak = GIB + tokens * 1024**2
        sampler.last = sampler.sample()
        watch.step_end(step, optimizer=None)

    ((kind, risk),) = emitted
    # GPU n: (140 + 10n) GiB total, (n + 1) GiB used of which 1 GiB is torch's -> 140 + 9n GiB available
    assert kind == ev.OOM_RISK and risk["step"] == 3
    assert risk["available"] == (140 + 9 * nvml_index) * GIB


def test_no_row_for_the_training_gpu_means_no_forecast(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakePynvml(four_gpus()), "")
    sampler = MemorySampler(lambda *a, **k: None, 2.0)
    emitted: list[Any] = []
    watch = MemoryWatch(
        lambda *a, **k: emitted.append(a),
        sampler,
        BatchRecorder(),
        FakeCudaMemory(base=GIB, reserved=GIB),
        4000,
        1,
    )
    for step in (1, 2, 3):
        watch.recorder.record(1000 * step)
        sampler.last = sampler.sample()
        watch.step_end(step, optimizer=None)

    assert emitted == []
