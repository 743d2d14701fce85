"""The compact index beside events.jsonl folds to exactly what folding every event gives."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from loratop.core import events as ev
from loratop.core.run_index import INDEX, load_index
from loratop.core.run_summary import fold_run, settle_finished_run
from loratop.trainer.event_sink import EventSink
from tests.conftest import RECORDED_RUNS, assert_same_fold, slow_fold

RECORDED = Path(__file__).parent / "data" / "recorded_run" / "events.jsonl"


def _synthetic(run_dir: Path, steps: int, finish: bool = True) -> EventSink:
    """A run written through the trainer's own sink (which writes the index as it goes)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    sink = EventSink(run_dir / "events.jsonl")
    sink.emit(ev.LOG, message="importing")
    sink.emit(ev.MEMORY, host={"rss": 10, "total": 100, "available": 90}, gpu_state="no_nvidia_gpu", gpus=[])
    sink.emit(ev.RUN_STARTED, run_name=run_dir.name, max_steps=steps, device={"kind": "cuda"}, config={})
    for step in range(1, steps + 1):
        loss = math.nan if step == 7 else 2.0 - step / steps
        sink.emit(ev.STEP, step=step, loss=loss, lr=1e-4, grad_norm=0.5, tokens=100 * step, epoch=0.1)
        if step % 2 == 0:
            gpus = [{"index": 0, "used": 1000 + step, "total": 10**6}, {"index": 1, "used": 5000 + step % 7}]
            sink.emit(ev.MEMORY, host={"rss": 50 + step}, gpu_state="ok", gpus=gpus)
        if step == 10:
            sink.emit(ev.SPIKE, step=step, loss=9.0, baseline=2.0, severity="severe", kind="jump")
            sink.emit(ev.CHECKPOINT, step=step, path="x/checkpoint-10", final=False)
    if finish:
        sink.emit(ev.RUN_FINISHED, status="completed", duration_s=1.0)
        sink.close()
    return sink


def test_the_trainers_index_folds_like_every_event(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _synthetic(run_dir, 200)
    assert load_index(run_dir) is not None
    fast, offset = fold_run(run_dir)
    assert offset == (run_dir / "events.jsonl").stat().st_size
    assert_same_fold(fast, slow_fold(run_dir))
    assert fast.mem_series_kind == "gpu" and list(fast.mem_series) == list(range(1002, 1201, 2))
    assert fast.peak_gpu_used == 5006 and fast.peak_rss == 250  # GPU 1's highest; the host's
    assert math.isnan(fast.loss[6]) and len(fast.spikes) == 1 and fast.finished is not None


def test_a_live_run_folds_its_index_then_the_rest_of_the_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    sink = _synthetic(run_dir, 50, finish=False)
    index = load_index(run_dir)
    assert index is not None and index.covered == (run_dir / "events.jsonl").stat().st_size
    assert_same_fold(fold_run(run_dir)[0], slow_fold(run_dir))
    sink.emit(ev.STEP, step=51, loss=1.0, lr=1e-4, grad_norm=0.5, tokens=5100)
    sink.close()  # the trainer dies in the middle of indexing: torn records, events the index lacks
    with open(run_dir / INDEX / "rare.jsonl", "ab") as fh:
        fh.write(b"12 {not an event")
    with open(run_dir / INDEX / "memory.bin", "r+b") as fh:
        fh.truncate(fh.seek(0, 2) - 20)
    with open(run_dir / "events.jsonl", "ab") as fh:
        fh.write(ev.encode(sink.seq, ev.STEP, {"step": 52, "loss": 0.9, "tokens": 5200}))
        fh.write(ev.encode(sink.seq + 1, ev.MEMORY, {"host": {"rss": 99}, "gpus": []}))
    fast, offset = fold_run(run_dir)
    assert offset == (run_dir / "events.jsonl").stat().st_size
    assert_same_fold(fast, slow_fold(run_dir))
    assert fast.mem_series_kind == "host" and list(fast.mem_series) == [99]


def test_an_index_that_is_not_this_files_is_not_used(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _synthetic(run_dir, 30)
    lines = (run_dir / "events.jsonl").read_bytes().splitlines(keepends=True)
    (run_dir / "events.jsonl").write_bytes(b"".join(lines[:-5]))  # rewritten: same first line, shorter
    assert load_index(run_dir) is None
    assert_same_fold(fold_run(run_dir)[0], slow_fold(run_dir))
    (run_dir / "events.jsonl").write_bytes(b"".join(lines[:-1]) + lines[-1].replace(b"completed", b"stopped__"))
    assert load_index(run_dir) is None, "same length, other last event"


def test_a_finished_run_without_an_index_gets_one_when_settled_and_a_live_one_does_not(tmp_path: Path) -> None:
    done = tmp_path / "done"
    shutil.copytree(RECORDED_RUNS / "tiny-r8", done, ignore=shutil.ignore_patterns(f"{INDEX}*"))
    with open(done / "events.jsonl", "ab") as fh:
        fh.write(b"garbage line\n")
    slow = slow_fold(done)
    assert not (done / INDEX).exists()
    assert_same_fold(fold_run(done)[0], slow)
    assert not any(p.name.startswith(INDEX) for p in done.iterdir()), "a look writes nothing"
    assert settle_finished_run(done)
    assert load_index(done) is not None, "the run's end leaves an index for every look"
    assert_same_fold(fold_run(done)[0], slow)
    live = tmp_path / "live"
    live.mkdir()
    (live / "events.jsonl").write_bytes(b"".join(RECORDED.read_bytes().splitlines(keepends=True)[:40]))
    assert_same_fold(fold_run(live)[0], slow_fold(live))
    assert not settle_finished_run(live)
    assert not any(p.name.startswith(INDEX) for p in live.iterdir()), "a live run's trainer may still index it"


def test_settling_a_settled_run_reads_no_index_records_and_a_stale_index_is_made_again(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Every attach of a finished run settles it again (the watcher saw it end): with its caches
    good, only the small files are looked at, not a long run's whole index (80 MB more held at
    a 1M-step attach). An index another file's, or a stale one, is not taken for current."""
    from loratop.core import run_summary
    from loratop.core.run_index import index_looks_current

    done = tmp_path / "done"
    shutil.copytree(RECORDED_RUNS / "tiny-r8", done, ignore=shutil.ignore_patterns(f"{INDEX}*"))
    assert not index_looks_current(done)
    assert settle_finished_run(done) and index_looks_current(done)
    with monkeypatch.context() as patched:
        patched.setattr(run_summary, "load_index", lambda run_dir: pytest.fail("the whole index read"))
        patched.setattr(run_summary, "fold_file", lambda *a, **k: pytest.fail("the events read"))
        assert settle_finished_run(done)
    with open(done / "events.jsonl", "ab") as fh:
        fh.write(b"one more line\n")  # the file changed since its caches were made
    assert not index_looks_current(done)
    assert settle_finished_run(done) and index_looks_current(done) and load_index(done) is not None
    (done / "events.jsonl").write_bytes(RECORDED.read_bytes())  # another run's file in its place
    assert not index_looks_current(done)


def test_a_real_recorded_run_folds_the_same_from_its_index(tmp_path: Path) -> None:
    run_dir = tmp_path / "rec"
    run_dir.mkdir()
    sink = EventSink(run_dir / "events.jsonl")
    for event in ev.read_events(str(RECORDED))[0]:
        fields: dict[str, Any] = {k: v for k, v in event.items() if k not in ("v", "seq", "t", "type")}
        sink.emit(event["type"], **fields)
    sink.close()
    assert_same_fold(fold_run(run_dir)[0], slow_fold(run_dir))


def test_a_finished_runs_summary_is_cached_and_a_changed_file_is_read_again(tmp_path: Path) -> None:
    from loratop.core.run_summary import SUMMARY
    from loratop.core.runs import read_run, summarise_run

    run_dir = tmp_path / "run"
    _synthetic(run_dir, 40)
    assert settle_finished_run(run_dir)  # as the trainer does last
    first = summarise_run(run_dir)
    assert (run_dir / INDEX / SUMMARY).is_file()
    assert summarise_run(run_dir) == first == read_run(run_dir)[1], "the cached summary is the summary"
    (run_dir / "status.json").write_text('{"parent": "runs/base"}')  # status.json is read every time
    assert summarise_run(run_dir).parent == "runs/base"
    with open(run_dir / "events.jsonl", "ab") as fh:
        fh.write(ev.encode(999, ev.SPIKE, {"step": 40, "loss": 3.0, "severity": "mild"}))
    assert summarise_run(run_dir).spikes == first.spikes + 1, "a file that changed is folded again"


def test_the_catalog_folds_only_what_a_running_run_appended(tmp_path: Path, monkeypatch: Any) -> None:
    import json

    from loratop.core import runs as runs_module
    from loratop.core.runs import RunCatalog
    from tests.conftest import live_status

    root = tmp_path / "runs"
    _synthetic(root / "done", 30)
    live = root / "live"
    sink = _synthetic(live, 20, finish=False)
    (live / "status.json").write_text(json.dumps(live_status(state="running", started_at=1.0)))
    whole_folds: list[Path] = []
    real_fold_run = runs_module.fold_run

    def counting_fold_run(run_dir: Path) -> Any:
        whole_folds.append(run_dir.name)
        return real_fold_run(run_dir)

    monkeypatch.setattr(runs_module, "fold_run", counting_fold_run)
    catalog = RunCatalog(root)
    first = {run.name: run for run in catalog.runs()}
    assert first["live"].status == "running" and first["live"].step == 20 and first["done"].step == 30
    for step in range(21, 26):
        sink.emit(ev.STEP, step=step, loss=1.0, lr=1e-4, grad_norm=0.5, tokens=100 * step)
    second = {run.name: run for run in catalog.runs()}
    assert second["live"].step == 25 and second["done"] == first["done"]
    assert sorted(whole_folds) == ["done", "live"], "the second look read only the five new lines"
    sink.emit(ev.RUN_FINISHED, status="completed", duration_s=2.0)
    sink.close()
    shutil.rmtree(root / "done")
    third = {run.name: run for run in catalog.runs()}
    assert list(third) == ["live"] and third["live"].status == "completed"
    assert third["live"] == RunCatalog(root).runs()[0], "the same summary as a fresh look"


def test_a_damaged_line_with_a_carriage_return_hides_nothing_after_it(tmp_path: Path) -> None:
    """Only a newline ends a line, for the fold as for every other reader of events.jsonl."""
    run_dir = tmp_path / "run"
    _synthetic(run_dir, 20)
    lines = (run_dir / "events.jsonl").read_bytes().splitlines(keepends=True)
    shutil.rmtree(run_dir / INDEX)
    (run_dir / "events.jsonl").write_bytes(b"".join(lines[:10]) + b'{"broken\rline\n' + b"".join(lines[10:]))
    fast, _ = fold_run(run_dir)
    slow = slow_fold(run_dir)
    assert slow.garbage == 1 and slow.finished is not None
    assert_same_fold(fast, slow)
    assert settle_finished_run(run_dir)
    assert_same_fold(fold_run(run_dir)[0], slow), "and from the index the run's end left"


def test_a_diverged_runs_summary_is_cached_too(tmp_path: Path) -> None:
    from loratop.core.run_summary import SUMMARY
    from loratop.core.runs import summarise_run

    run_dir = tmp_path / "run"
    sink = EventSink(run_dir.mkdir() or run_dir / "events.jsonl")
    sink.emit(ev.RUN_STARTED, run_name="run", max_steps=2, config={})
    sink.emit(ev.STEP, step=1, loss=2.0, tokens=10)
    sink.emit(ev.STEP, step=2, loss=math.nan, tokens=20)
    sink.emit(ev.RUN_FINISHED, status="failed", duration_s=1.0)
    sink.close()
    assert settle_finished_run(run_dir)
    first = summarise_run(run_dir)
    assert (run_dir / INDEX / SUMMARY).is_file(), "a NaN last loss is no reason to fold the run at every look"
    again = summarise_run(run_dir)
    assert again.last_loss is not None and math.isnan(again.last_loss) and again.min_loss == first.min_loss == 2.0
