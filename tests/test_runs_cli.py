"""``loratop ls`` and ``loratop attach`` on runs found on disk."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tests.conftest import loratop
from tui.runs import find_run, list_runs, summarise_run

RECORDED = Path(__file__).parent / "data" / "recorded_run" / "events.jsonl"


def _make_runs(root: Path) -> None:
    done = root / "done-run"
    done.mkdir(parents=True)
    shutil.copy(RECORDED, done / "events.jsonl")
    (done / "status.json").write_text(json.dumps({"pid": 1, "started_at": 100.0}))
    live = root / "live-run"
    live.mkdir()
    lines = RECORDED.read_text().splitlines(keepends=True)
    (live / "events.jsonl").write_text("".join(lines[:40]))
    (live / "status.json").write_text(json.dumps({"pid": os.getpid(), "started_at": 50.0}))
    dead = root / "dead-run"
    dead.mkdir()
    (dead / "events.jsonl").write_text("".join(lines[:40]))
    (dead / "status.json").write_text(json.dumps({"pid": 2**22 + 12345, "started_at": 200.0}))


def test_list_runs_puts_running_first_and_tells_dead_from_live(tmp_path: Path) -> None:
    _make_runs(tmp_path)
    runs = list_runs(tmp_path)
    assert [r.name for r in runs] == ["live-run", "dead-run", "done-run"]
    assert [r.status for r in runs] == ["running", "exited without report", "completed"]
    done = summarise_run(tmp_path / "done-run")
    assert done.step == 60 and done.max_steps == 60 and done.peak_vram is None and done.device == "cpu"
    assert done.last_loss is not None and abs(done.last_loss - 6.040285587310791) < 1e-9


def test_ls_prints_the_table(tmp_path: Path) -> None:
    _make_runs(tmp_path)
    result = loratop("ls", "--runs-dir", str(tmp_path))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["RUN", "STATUS", "STEP", "LAST", "LOSS", "PEAK", "VRAM", "SPIKES", "SPILLS", "STARTED"]
    assert lines[3].startswith("done-run") and "completed" in lines[3] and "60/60" in lines[3] and "6.0403" in lines[3]
    assert "n/a (CPU)" in lines[3]


def test_attach_to_an_unknown_run_is_one_clear_line(tmp_path: Path) -> None:
    result = loratop("attach", "nope", "--runs-dir", str(tmp_path))
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"loratop: no run 'nope': not a folder with events.jsonl, nor a run under {tmp_path}/"
    )
    assert "Traceback" not in result.stderr


def test_find_run_by_name_path_or_latest(tmp_path: Path) -> None:
    _make_runs(tmp_path)
    assert find_run("done-run", tmp_path) == tmp_path / "done-run"
    assert find_run(str(tmp_path / "live-run"), tmp_path) == tmp_path / "live-run"
    assert find_run(None, tmp_path) == tmp_path / "dead-run"  # the newest start


def test_trainer_alive_from_status() -> None:
    import time

    from trainer.run_dir import trainer_alive

    assert trainer_alive({"pid": os.getpid()})
    assert not trainer_alive({"pid": 2**22 + 12345})
    assert trainer_alive({"launched_at": time.time() - 5}), "launched, trainer not started yet"
    assert not trainer_alive({"launched_at": time.time() - 3600}), "launched an hour ago and never started"
