"""Issue 26, item 13: a hint beside the ETA when other work takes CPU time from the trainer.

The judgement is pure (core/cpu_busy.py), fed here with the figures a ``memory`` event
carries; the reader (trainer/cpu_share.py) is the real one, on this machine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from loratop.core import events as ev
from loratop.core.cpu_busy import CpuSample, cpu_contended
from loratop.core.run_state import RunState
from loratop.trainer.cpu_share import CpuShare
from loratop.tui.models import panels


def _samples(trainer: float, busy: float, cores: int, waited: float | None = None, n: int = 10) -> list[CpuSample]:
    return [CpuSample(1000.0 + 2 * i, trainer, busy, cores, waited) for i in range(n)]


@pytest.mark.parametrize(
    ("trainer", "busy", "cores", "waited", "contended"),
    [
        (2.0, 2.0, 2, 0.02, False),  # the trainer alone on a 2-core box: every core its own
        (1.0, 2.0, 2, 1.0, True),  # a neighbour takes one of the two cores: the ETA doubles
        (1.9, 2.0, 2, 0.1, False),  # the dashboard's own sliver is not contention
        (1.2, 1.2, 64, 0.0, False),  # a GPU run on a big box, nothing else running
        (1.2, 11.0, 64, 0.0, False),  # a GPU run with a few busy neighbours: cores to spare
        (1.0, 8.0, 8, 0.02, False),  # every other core busy, but the GPU run's one thread gets its core
        (1.0, 8.0, 8, 0.6, True),  # ... and here it waits for one more than a third of the time
        (48.0, 64.0, 64, 16.0, True),  # a CPU run on 64 cores, a 16-core job beside it
        (56.0, 64.0, 64, 8.0, False),  # ... a 8-core one: an eighth, under a quarter
        (0.5, 1.0, 1, 0.5, True),  # one core, shared half and half
        (1.0, 2.0, 2, None, True),  # no run-queue figure (not Linux): saturated cores, others' share
    ],
)
def test_contention_is_saturated_cores_others_share_and_the_trainer_waiting(
    trainer: float, busy: float, cores: int, waited: float | None, contended: bool
) -> None:
    assert cpu_contended(_samples(trainer, busy, cores, waited)) is contended


def test_a_burst_shorter_than_the_window_is_not_contention() -> None:
    calm = _samples(2.0, 2.0, 2, 0.0, n=14)  # 28 s of the trainer alone
    burst = [CpuSample(1030.0, 1.0, 2.0, 2, 1.0)]  # then one sample with a neighbour
    assert not cpu_contended(calm + burst)
    assert cpu_contended(calm + [CpuSample(1030.0 + 2 * i, 1.0, 2.0, 2, 1.0) for i in range(20)])  # it stays


def test_no_figures_no_judgement() -> None:
    assert not cpu_contended([])
    assert CpuSample.from_host(1.0, {"rss": 1}) is None  # a run's first sample, or an older loratop's run
    assert CpuSample.from_host(1.0, {"cpu_trainer": float("nan"), "cpu_busy": 1.0, "cpu_cores": 2}) is None
    assert CpuSample.from_host(1.0, {"cpu_trainer": 1.0, "cpu_busy": 1.0, "cpu_cores": 0}) is None
    assert CpuSample.from_host(1.0, {"cpu_trainer": 1, "cpu_busy": 2, "cpu_cores": 2}) == CpuSample(1.0, 1.0, 2.0, 2)
    both = {"cpu_trainer": 1.0, "cpu_busy": 2.0, "cpu_cores": 2, "cpu_waited": 0.5}
    assert CpuSample.from_host(1.0, both) == CpuSample(1.0, 1.0, 2.0, 2, 0.5)


def _memory(t: float, trainer: float, busy: float, cores: int = 2) -> dict[str, Any]:
    host = {"rss": 1 << 30, "total": 8 << 30, "available": 4 << 30}
    host.update(cpu_trainer=trainer, cpu_busy=busy, cpu_cores=cores, cpu_waited=cores - trainer)
    return {"type": ev.MEMORY, "t": t, "host": host, "gpu_state": "no_nvidia_gpu", "gpus": []}


def _state(*events: dict[str, Any]) -> RunState:
    state = RunState(Path("runs/x"))
    for seq, event in enumerate(events):
        state.apply({"v": 1, "seq": seq, **event})
    return state


def _cpu_run(trainer: float, busy: float) -> RunState:
    started = {
        "type": ev.RUN_STARTED, "t": 999.0, "run_name": "x", "max_steps": 3000,
        "model": {"name_or_path": "tiny"}, "device": {"kind": "cpu"}, "params": {},
    }  # fmt: skip
    events: list[dict[str, Any]] = [started]
    for i in range(1, 31):
        t = 1000.0 + i
        events.append(
            {"type": ev.STEP, "t": t, "step": i, "loss": 5.0, "lr": 1e-3, "grad_norm": 0.5, "tokens": 900 * i}
        )
        events.append(_memory(t, trainer, busy))
    return _state(*events)


def test_the_header_says_so_beside_the_eta_while_a_neighbour_takes_the_cpu() -> None:
    starved = _cpu_run(trainer=1.0, busy=2.0)
    assert starved.cpu_contended
    _, wide = panels.header_lines(starved, now=1031.0, width=160)
    assert "ETA 49:30 (CPU busy with other work: ETA may stretch) · " in wide
    _, narrow = panels.header_lines(starved, now=1031.0, width=78)
    assert "ETA 49:30 (CPU busy) · " in narrow and len(narrow) <= 78, narrow

    alone = _cpu_run(trainer=2.0, busy=2.0)
    assert not alone.cpu_contended
    _, second = panels.header_lines(alone, now=1031.0, width=160)
    assert "CPU busy" not in second and "ETA 49:30 · " in second


def test_no_hint_once_the_run_has_ended_or_for_a_run_of_several_ranks() -> None:
    finished = _cpu_run(trainer=1.0, busy=2.0)
    finished.apply({"v": 1, "seq": 999, "t": 1032.0, "type": ev.RUN_FINISHED, "status": "completed"})
    assert not finished.cpu_contended  # the ETA it qualified is gone
    ranks = _cpu_run(trainer=1.0, busy=2.0)
    assert ranks.started is not None
    ranks.started["device"]["world_size"] = 2  # the other rank's work would read as a neighbour's
    assert not ranks.cpu_contended


def test_attach_takes_the_cpu_figures_of_the_last_memory_event(tmp_path: Path) -> None:
    """Attach folds the run's index, which keeps no column of these figures: the last memory
    event, read whole, gives the hint its first sample at once."""
    from loratop.core.run_index import IndexWriter, load_index
    from loratop.core.run_summary import fold_run

    lines = [ev.encode(0, ev.RUN_STARTED, {"run_name": "x", "max_steps": 3000, "device": {"kind": "cpu"}}, 999.0)]
    for i in range(1, 4):
        lines.append(ev.encode(2 * i - 1, ev.STEP, {"step": i, "loss": 5.0, "tokens": 900 * i}, 1000.0 + i))
        memory = _memory(1000.0 + i, trainer=1.0 + i / 10, busy=2.0)
        lines.append(
            ev.encode(2 * i, ev.MEMORY, {k: v for k, v in memory.items() if k not in ("type", "t")}, 1000.0 + i)
        )
    writer, end = IndexWriter(tmp_path), 0
    with (tmp_path / "events.jsonl").open("wb") as fh:
        for line in lines:
            fh.write(line)
            end += len(line)
            writer.add(line, end)
    writer.close()
    assert load_index(tmp_path) is not None
    state, _ = fold_run(tmp_path)
    assert list(state.cpu) == [CpuSample(1003.0, 1.3, 2.0, 2, 0.7)]
    assert state.cpu_contended  # 0.7 of 2 cores went to other work


def test_the_real_reader_measures_this_process_and_its_cores() -> None:
    reader = CpuShare()
    assert reader.read() is None, "a rate needs two readings"
    end = time.process_time() + 0.2
    while time.process_time() < end:  # 0.2 s of CPU time: a condition, not a wall-clock guess
        pass
    figures = reader.read()
    assert figures is not None
    cores = figures["cpu_cores"]
    assert isinstance(cores, int) and cores >= 1
    assert figures["cpu_trainer"] > 0, "the CPU time this process just spent"
    assert 0 <= figures["cpu_busy"] <= cores
    if Path("/proc/self/task").is_dir():  # Linux: its threads' run-queue delay
        assert figures["cpu_waited"] >= 0
    assert CpuSample.from_host(1.0, figures) is not None, "what the sampler writes, the dashboard reads"
