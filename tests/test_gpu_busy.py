"""GPU busy %, MFU and the starved-GPU alert (issue 25, items 1 and 2), with figures worked out
by hand: the pure logic, the trainer's memory watch over fake NVML and CUDA (hardware CI
lacks), and what the dashboard, ls, compare and export show from the events."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fake_cuda import GIB, FakeCudaMemory
from fake_nvml import FakeGpu, FakePynvml, install

from loratop.core import events as ev
from loratop.core.gpu_busy import (
    GPU_STARVED,
    Cause,
    StarvedGpu,
    busy_pct,
    mfu,
    peak_bf16_flops,
    starved_causes,
    starved_message,
)
from loratop.core.run_state import RunState
from loratop.trainer.event_sink import EventSink
from loratop.trainer.memory_sampler import MemorySampler
from loratop.trainer.memory_watch import BatchRecorder, MemoryWatch
from loratop.tui.models import panels
from tests.conftest import RECORDED_RUNS, assert_same_fold, slow_fold


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H200", 989.4),
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10G", 70.0),
        ("NVIDIA A10", 125.0),
        ("Tesla T4", None),
        ("NVIDIA GeForce RTX 4090", None),
        (None, None),
    ],
)
def test_the_peak_is_the_data_sheets_dense_bf16_or_unknown(name: str | None, tflops: float | None) -> None:
    assert peak_bf16_flops(name) == (None if tflops is None else tflops * 1e12)


def test_mfu_is_four_flops_per_parameter_per_token_over_the_gpus_peaks() -> None:
    # 1e9 parameters, 1,535 tokens/s on one H200: 4 × 1e9 × 1535 / 989.4e12 = 0.6206 %
    assert mfu(1535.0, 10**9, ["NVIDIA H200"]) == pytest.approx(4 * 1e9 * 1535 / 989.4e12)
    assert mfu(3070.0, 10**9, ["NVIDIA H200", "NVIDIA H200"]) == pytest.approx(4 * 1e9 * 1535 / 989.4e12)
    assert mfu(1535.0, 10**9, ["NVIDIA H200", "Tesla T4"]) is None, "one peak unknown: no MFU, not a guess"
    assert mfu(1535.0, 10**9, []) is None, "CPU"
    assert mfu(None, 10**9, ["NVIDIA H200"]) is None and mfu(0.0, 10**9, ["NVIDIA H200"]) is None


def test_busy_is_the_gpus_the_run_trains_on() -> None:
    rows = [
        {"index": 3, "cuda_index": 0, "util_pct": 10},
        {"index": 0, "cuda_index": 1, "util_pct": 90},  # another job's GPU, visible to us
        {"index": 1, "cuda_index": 2, "util_pct": None},
    ]
    assert busy_pct(rows) == 10.0
    assert busy_pct(rows, gpus_used=2) == 50.0
    assert busy_pct([{"util_pct": "x"}, {"util_pct": 150}]) is None and busy_pct(None) is None


def test_starved_needs_a_whole_window_under_the_line_and_fires_once_per_stretch() -> None:
    slow = StarvedGpu(window_s=60.0, after_steps=0)
    assert [s for s in (1, 2, 3) if slow.step(s, 100.0 * s, 5.0) is not None] == [2], "steps slower than the window"
    starved = StarvedGpu(window_s=60.0, below_pct=30.0, after_steps=10)
    fired = [s for s in range(1, 41) if starved.step(s, 3.0 * s, 5.0) is not None]
    # steps 11.. judged (t = 33 s on); a whole window (60 s of samples) first at step 31 (t = 93)
    assert fired == [31]
    assert starved.step(41, 123.0, None) is None, "no reading: nothing judged"
    for s in range(42, 70):  # busy again for a whole window: re-armed
        starved.step(s, 3.0 * s, 80.0)
    fired = [s for s in range(70, 110) if starved.step(s, 3.0 * s, 5.0) is not None]
    assert len(fired) == 1


def test_causes_are_ranked_from_the_runs_figures_and_never_suggest_what_it_has() -> None:
    shapes = [(4, length) for length in (120, 97, 301, 64, 88, 250, 130, 77)]  # 8 lengths in 8 batches
    causes = starved_causes(
        shapes=shapes,
        between_steps_share=0.45,
        predicted_peak=20 * GIB,
        available=130 * GIB,
        gpu_name="NVIDIA H200",
        knobs={"per_device_train_batch_size": 4},
    )
    assert [c.knob.split(":")[0] for c in causes] == [
        "training.pad_to_multiple_of",  # 8/8 lengths differ: weight 1.0
        "training.sdpa_backend",  # Hopper, shapes vary: 0.9
        "training.per_device_train_batch_size",  # 1 - 20/130 = 0.85
        "training.dataloader_num_workers",  # 0.45 of the time between steps
    ]
    assert causes[2].knob.startswith("training.per_device_train_batch_size: 8")
    assert "8 different padded lengths in the last 8 batches" in causes[0].evidence
    already = starved_causes(
        shapes=shapes,
        between_steps_share=0.45,
        predicted_peak=None,
        available=None,
        gpu_name="NVIDIA A100-SXM4-80GB",
        knobs={"pad_to_multiple_of": 64, "dataloader_num_workers": 4},
    )
    assert already == [], "each suggestion is one the run does not have yet"
    message = starved_message(6.6, 60, causes[:1])
    assert message.startswith("GPU busy 7% over the last 60 s while training. Likely: 1) 8 different")
    assert "nothing the run shows explains it" in starved_message(6.6, 60, [])
    assert Cause(1, "k: v", "e").line() == "e → k: v"


def test_the_memory_watch_raises_the_alert_once_with_the_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer side: a GPU 6 % busy (fake NVML), steps 3 s apart (a clock the test steps),
    batches of varied lengths: one ``alert`` of kind gpu_starved, with its causes."""
    install(monkeypatch, FakePynvml([FakeGpu("GPU-1", name="NVIDIA H200", total=140 * GIB, util=6)]), None)
    sampler = MemorySampler(lambda *a, **k: None, 2.0)
    emitted: list[tuple[str, dict[str, Any]]] = []
    now = [0.0]
    recorder = BatchRecorder()
    watch = MemoryWatch(
        lambda type_, **fields: emitted.append((type_, fields)),
        sampler,
        recorder,
        FakeCudaMemory(base=2 * GIB, reserved=GIB),
        worst_tokens=4 * 512,
        batch_size=4,
        knobs={"per_device_train_batch_size": 4, "sdpa_backend": "auto"},
        clock=lambda: now[0],
    )
    for step in range(1, 41):
        watch.step_begin()
        recorder.shapes.append((4, 64 + 7 * step))
        recorder.record(4 * (64 + 7 * step))
        now[0] += 2.5
        sampler.last = sampler.sample()
        watch.step_end(step, optimizer=None)
        now[0] += 0.5  # between steps
    alerts = [fields for kind, fields in emitted if kind == ev.ALERT]
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["kind"] == GPU_STARVED and alert["busy_pct"] == 6.0 and alert["step"] == 31
    assert alert["knobs"][0].startswith("training.pad_to_multiple_of")
    assert "training.sdpa_backend: flash" in alert["knobs"]
    assert alert["message"].startswith("GPU busy 6% over the last 60 s while training. Likely: 1)")


def test_a_cpu_run_never_judges_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that trains on the CPU of a box whose GPU (another job's, or idle) reads 0 % busy:
    the samples carry that GPU, but the run is not starving it."""
    install(monkeypatch, FakePynvml([FakeGpu("GPU-1", util=0)]), None)
    emitted: list[Any] = []
    now = [0.0]
    sampler = MemorySampler(lambda *a, **k: None, 2.0)
    watch = MemoryWatch(
        lambda kind, **f: emitted.append(kind), sampler, BatchRecorder(), None, 0, 1, clock=lambda: now[0]
    )
    for step in range(1, 60):
        watch.step_begin()
        now[0] += 3
        sampler.last = sampler.sample()
        assert busy_pct(sampler.last["gpus"]) == 0.0, "the GPU is there, and idle"
        watch.step_end(step, optimizer=None)
    assert ev.ALERT not in emitted and not watch.starved.samples


# -- what a user sees -----------------------------------------------------------------------


def _gpu_run(tmp_path: Path, util: float, name: str = "NVIDIA H200") -> Path:
    """A run written through the real sink: 1e9 parameters on one GPU, 40 steps of 2,048
    tokens 2 s apart (1,024 tokens/s), a memory sample per step at ``util`` % busy."""
    run = tmp_path / "gpu-run"
    run.mkdir()
    sink = EventSink(run / "events.jsonl")
    t = 1000.0
    sink.emit(ev.RUN_STARTED, at=t, run_name="gpu-run", max_steps=40, model={"name_or_path": "m"},
              device={"kind": "cuda", "count": 1, "name": name, "names": [name]},
              params={"trainable": 1, "total": 10**9, "fraction": 1e-9})  # fmt: skip
    for step in range(1, 41):
        t += 2.0
        gpu = {"index": 0, "cuda_index": 0, "name": name, "used": 20 * GIB, "total": 140 * GIB, "free": 0,
               "util_pct": util}  # fmt: skip
        sink.emit(ev.MEMORY, at=t - 0.5, host={"rss": GIB}, gpu_state="ok", gpus=[gpu])
        sink.emit(ev.STEP, at=t, step=step, loss=2.0, lr=1e-4, grad_norm=0.5, tokens=2048 * step)
    sink.emit(ev.RUN_FINISHED, at=t + 1, status="completed", step=40)
    sink.close()
    (run / "status.json").write_text(json.dumps({"state": "finished", "status": "completed"}))
    return run


def test_the_header_ls_compare_and_export_show_busy_and_mfu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loratop.cli import main as cli
    from loratop.core.run_summary import fold_run
    from loratop.tui.models.export import export_files

    run = _gpu_run(tmp_path, util=16.0)
    state, _ = fold_run(run)
    expected_mfu = 4 * 1e9 * 1024 / 989.4e12  # 0.414 %
    assert state.recent_busy() == 16.0 and state.mean_busy == 16.0
    assert_same_fold(state, slow_fold(run))  # from the index as from every event
    _, second = panels.header_lines(state, now=2000.0)
    assert second.endswith("1,024 tok/s now · GPU 16% busy · MFU 0.4%")  # now: the last 20 steps
    _, narrow = panels.header_lines(state, now=2000.0, width=76)  # an 80-column monitor
    assert len(narrow) <= 76 and narrow.endswith("1,024 tok/s now · GPU 16% busy · MFU 0.4%"), narrow
    _, narrower = panels.header_lines(state, now=2000.0, width=60)
    assert narrower == "step 40/40 · loss 2.0000 · ETA – · 1,024 tok/s now · GPU 16%"

    assert cli.main(["ls", "--runs-dir", str(tmp_path)]) == 0
    assert "16% · MFU 0.4%" in capsys.readouterr().out
    shutil.copytree(RECORDED_RUNS / "tiny-r8", tmp_path / "cpu-run")
    assert cli.main(["compare", "gpu-run", "cpu-run", "--runs-dir", str(tmp_path), "--no-tui"]) == 0
    compared = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("GPU busy"))
    assert "16% · MFU 0.4%" in compared and "n/a (CPU)" in compared

    export_files(run, tmp_path / "out")
    rows = (tmp_path / "out" / "gpu-run-metrics.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert last[header.index("gpu_busy_pct")] == "16.0"
    assert float(last[header.index("mfu_pct")]) == pytest.approx(100 * expected_mfu, abs=1e-3)


def test_a_cpu_run_says_na_never_zero(tmp_path: Path) -> None:
    from loratop.core.run_summary import fold_run
    from loratop.core.runs import list_runs

    shutil.copytree(RECORDED_RUNS / "tiny-r8", tmp_path / "cpu-run")
    state, _ = fold_run(tmp_path / "cpu-run")
    assert state.recent_busy() is None and state.mfu(1000.0) is None
    assert panels.header_lines(state, now=2000.0)[1].endswith(" · GPU n/a (CPU)")
    (run,) = list_runs(tmp_path)
    assert run.gpu_busy is None and run.mfu is None
    assert panels.busy_label(run.gpu_busy, run.mfu, run.device) == "n/a (CPU)"


def test_a_starved_alert_is_shown_like_the_overfitting_one(tmp_path: Path) -> None:
    state = RunState(tmp_path)
    state.apply({"v": 1, "seq": 0, "t": 1.0, "type": ev.RUN_STARTED, "run_name": "x", "device": {"kind": "cuda"}})
    state.apply({"v": 1, "seq": 1, "t": 2.0, "type": ev.STEP, "step": 1, "loss": 2.0, "tokens": 10})
    message = "GPU busy 7% over the last 60 s while training. Likely: 1) … → training.pad_to_multiple_of: 64"
    state.apply({"v": 1, "seq": 2, "t": 3.0, "type": ev.ALERT, "kind": GPU_STARVED, "step": 29, "message": message})
    first, _ = panels.header_lines(state, now=4.0)
    assert first.endswith(" · GPU STARVED")
    assert panels.outcome_text(state) == f"GPU starved at step 29: {message}"
    state.apply({"v": 1, "seq": 3, "t": 5.0, "type": ev.RUN_FINISHED, "status": "completed", "step": 30})
    assert "GPU STARVED" not in panels.header_lines(state, now=6.0)[0], "the run is over: its outcome speaks"


@pytest.mark.slow
def test_the_real_trainer_raises_the_alert_into_events_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """loratop's own trainer, in this process on the tiny model, its GPU played by fakes at 5 %
    busy; the window shortened to 0.2 s so a CPU run of 30 steps covers it."""
    from test_spill_endings import _run

    from loratop.core.run_summary import fold_run

    install(monkeypatch, FakePynvml([FakeGpu("GPU-1", name="NVIDIA H200", total=80 * GIB, used=2 * GIB, util=5)]), None)
    run = _run(tmp_path / "run", FakeCudaMemory(), steps=30)
    setup = run.setup

    def setup_with_a_short_window() -> Any:
        trainer = setup()
        run.watch.starved = StarvedGpu(window_s=0.2, after_steps=5)  # 25 steps of ≥ 0.03 s cover it
        return trainer

    run.setup = setup_with_a_short_window  # type: ignore[method-assign]
    assert run.execute() == 0
    run.sink.close()
    state, _ = fold_run(tmp_path / "run")
    alerts = [a for a in state.alerts if a.get("kind") == GPU_STARVED]
    assert len(alerts) == 1 and alerts[0]["busy_pct"] == 5.0
    assert alerts[0]["message"].startswith("GPU busy 5% over the last 0 s while training")
    assert state.mean_busy == 5.0
