"""A spill is counted however a run ends (issue 23): loratop's own trainer, run in this process
on the embedded tiny model, ends by running out of memory (or by another exception) in the
middle of a step, just after the driver evicted paged optimizer state. The records of that
eviction sit in CUPTI's buffer until someone drains it; the Trainer's ``on_train_end`` never
comes on such an ending, so the run itself must drain it and write the spill before
``run_finished``. CUDA and CUPTI are hardware CI lacks: :class:`FakeCudaMemory` and
:class:`FakeSpillSource` stand in for them, behind the real adapter's methods; the trainer,
its events and the protocol are the real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fake_cuda import GIB, MIB, PAGED_BASE, FakeCudaMemory, FakePagedBuffer, FakeSpillSource
from fake_nvml import FakeGpu, FakePynvml, install

from loratop.core import events as ev
from loratop.core.run_summary import fold_run
from loratop.core.spills import EXACT
from loratop.preflight.config import load_config, parse_overrides
from loratop.trainer.event_sink import EventSink
from loratop.trainer.memory_watch import batch_tokens
from loratop.trainer.train import Run
from loratop.tui.models import panels
from tests.conftest import REPO, of_type, read_events

FAIL_IN_STEP = 4
"""The step whose forward pass runs out of memory (steps 1-3 complete)."""
EVICTED = 48 * MIB


def _run(run_dir: Path, gpu: FakeCudaMemory, steps: int = 8) -> Run:
    sets = [f"output_dir={run_dir}", f"training.max_steps={steps}", "training.save_steps=0", "data.eval_split=null"]
    sets += ["data.max_rows=120"]
    config = load_config(REPO / "sample_configs/tiny-cpu-demo.yaml", parse_overrides(sets), check_files=False)
    run_dir.mkdir(parents=True)
    run = Run(config, run_dir, EventSink(run_dir / "events.jsonl"))
    run.gpu_memory = lambda cuda: gpu  # type: ignore[method-assign]
    return run


@pytest.mark.slow
@pytest.mark.parametrize(
    ("error", "status"),
    [
        (lambda: __import__("torch").OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), ev.OOM),
        (lambda: RuntimeError("CUDA error: an illegal memory access was encountered"), ev.FAILED),
    ],
    ids=["oom", "exception"],
)
def test_a_spill_just_before_the_run_dies_is_in_events_jsonl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Any, status: str
) -> None:
    install(monkeypatch, FakePynvml([FakeGpu("GPU-1", total=80 * GIB, used=2 * GIB)]), None)
    source = FakeSpillSource()
    gpu = FakeCudaMemory(paged=[FakePagedBuffer(PAGED_BASE, 96 * MIB)], source=source)
    run = _run(tmp_path / "run", gpu)
    died_on: dict[str, int] = {}
    setup = run.setup

    def setup_that_dies() -> Any:
        trainer = setup()
        model = trainer.model

        def forward(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if module.training and trainer.state.global_step == FAIL_IN_STEP - 1:
                # The driver evicts paged state to make room, then the allocation fails anyway.
                source.evict(PAGED_BASE, EVICTED, at_ns=10**12)
                died_on["tokens"] = batch_tokens(args, kwargs) or -1
                raise error()

        model.register_forward_pre_hook(forward, with_kwargs=True)  # after loratop's recorder
        return trainer

    run.setup = setup_that_dies  # type: ignore[method-assign]
    code = run.execute()
    run.sink.close()

    assert code != 0
    events = read_events(tmp_path / "run")
    paged = of_type(events, ev.PAGED_STATE)
    assert paged and paged[0]["spill_method"] == EXACT and paged[0]["paged_bytes"] == 96 * MIB
    spills = of_type(events, ev.SPILL)
    assert len(spills) == 1, spills
    spill = spills[0]
    assert spill["bytes"] == EVICTED and spill["method"] == EXACT and spill["total_events"] == 1
    assert spill["step"] == FAIL_IN_STEP - 1, "the last step that ended"
    finished = of_type(events, ev.RUN_FINISHED)
    assert len(finished) == 1 and finished[0]["status"] == status
    assert spill["seq"] < finished[0]["seq"], "written before the run says it ended"
    assert source.stopped, "CUPTI is stopped at the end"
    state, _ = fold_run(tmp_path / "run")  # what the dashboard, ls and attach read
    assert "spills 1  48 MiB (exact)" in panels.events_text(state)
    if status == ev.OOM:
        post_mortem = finished[0]["error"]
        assert post_mortem["batch_tokens"] == died_on["tokens"] > 0, "the batch that ran out, not one collated ahead"
