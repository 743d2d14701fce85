"""``loratop export``: a run's metrics as CSV and its events as clean JSONL."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from loratop.cli import main as cli
from loratop.core import events as ev
from loratop.tui.models.export import METRICS_HEADER, export_events_jsonl, export_metrics_csv, export_run
from tests.conftest import RECORDED_RUNS as RUNS
from tests.conftest import of_type, read_events

HEADER = (
    "step,time_s,loss,lr,grad_norm,tokens,epoch,spike,gpu_used_bytes,host_rss_bytes,"
    "ranks,max_rank_gpu_used_bytes,max_rank_rss_bytes,gpu_busy_pct,mfu_pct"
)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_metrics_csv_has_one_row_per_step_and_the_exact_header(tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    events = read_events(RUNS / "tiny-lr-high")
    steps = of_type(events, "step")

    written = export_metrics_csv(RUNS / "tiny-lr-high", out)

    assert out.read_text().splitlines()[0] == HEADER == ",".join(METRICS_HEADER)
    rows = _rows(out)
    assert written == len(rows) == len(steps) == 120
    assert [int(r["step"]) for r in rows] == [s["step"] for s in steps]
    assert [float(r["loss"]) for r in rows] == [s["loss"] for s in steps]  # exact, not rounded
    assert float(rows[0]["time_s"]) == pytest.approx(steps[0]["t"] - events[0]["t"], abs=1e-3)


def test_metrics_csv_marks_spike_steps_and_leaves_gpu_empty_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    spikes = {s["step"]: s["severity"] for s in of_type(read_events(RUNS / "tiny-lr-high"), "spike")}

    export_metrics_csv(RUNS / "tiny-lr-high", out)

    rows = _rows(out)
    assert {int(r["step"]): r["spike"] for r in rows if r["spike"]} == spikes == {65: "warn", 68: "warn"}
    assert all(r["gpu_used_bytes"] == "" for r in rows)  # nothing measured, never a 0
    assert all(int(r["host_rss_bytes"]) > 0 for r in rows)


def _write_run(run_dir: Path, events: list[tuple[int, str, dict[str, Any]]]) -> Path:
    run_dir.mkdir(parents=True)
    lines = [ev.encode(seq, kind, fields, t=100.0 + seq) for seq, kind, fields in events]
    (run_dir / "events.jsonl").write_bytes(b"".join(lines))
    return run_dir


def test_metrics_csv_takes_the_latest_memory_at_or_before_each_step_and_writes_nan(tmp_path: Path) -> None:
    run = _write_run(
        tmp_path / "run",
        [
            (0, "step", {"step": 1, "loss": 2.0, "tokens": 10}),
            (1, "memory", {"gpus": [{"used": 5}, {"used": 7}], "host": {"rss": 100}}),
            (2, "step", {"step": 2, "loss": math.nan, "tokens": 20}),
            (3, "memory", {"gpus": [{"used": 9}], "host": {"rss": 200}}),
            (4, "spike", {"step": 2, "severity": "warn"}),
            (5, "spike", {"step": 2, "severity": "fatal"}),
            (6, "step", {"step": 3, "loss": 1.5, "tokens": 30}),
        ],
    )
    out = tmp_path / "m.csv"

    assert export_metrics_csv(run, out) == 3

    rows = _rows(out)
    assert [(r["gpu_used_bytes"], r["host_rss_bytes"]) for r in rows] == [("", ""), ("7", "100"), ("9", "200")]
    assert [r["loss"] for r in rows] == ["2.0", "nan", "1.5"]
    assert [r["spike"] for r in rows] == ["", "fatal", ""]  # the worst of the step's spikes
    assert [r["time_s"] for r in rows] == ["0.000", "2.000", "6.000"]
    assert rows[0]["lr"] == rows[0]["grad_norm"] == rows[0]["epoch"] == ""  # not reported: empty


def test_events_jsonl_round_trips_through_the_protocol(tmp_path: Path) -> None:
    out = tmp_path / "e.jsonl"
    original = read_events(RUNS / "tiny-lr-high")

    written = export_events_jsonl(RUNS / "tiny-lr-high", out)

    events, skipped = ev.read_events(str(out))
    assert skipped == 0
    assert written == len(events) == len(original)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    assert events == original
    assert all(line.startswith('{"v":1,"seq":') for line in out.read_text().splitlines())  # compact, envelope first


def test_events_jsonl_drops_garbage_and_duplicates_and_orders_by_seq(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    lines = [
        ev.encode(1, "step", {"step": 1, "loss": math.nan}, t=2.0),
        ev.encode(0, "log", {"message": "hello"}, t=1.0),
        b"{not json\n",
        ev.encode(1, "step", {"step": 1, "loss": math.nan}, t=2.0),  # a pipe copy that was also written
        ev.encode(2, "run_finished", {"status": "completed"}, t=3.0),
    ]
    (run / "events.jsonl").write_bytes(b"".join(lines))
    out = tmp_path / "e.jsonl"

    assert export_events_jsonl(run, out) == 3

    events, skipped = ev.read_events(str(out))
    assert skipped == 0
    assert [e["seq"] for e in events] == [0, 1, 2]
    assert math.isnan(events[1]["loss"])  # NaN survives as the protocol spells it


def test_export_run_writes_both_files_named_after_the_run(tmp_path: Path) -> None:
    paths = export_run(RUNS / "tiny-r8", tmp_path / "new" / "dir")

    assert paths == [
        tmp_path / "new" / "dir" / "tiny-r8-metrics.csv",
        tmp_path / "new" / "dir" / "tiny-r8-events.jsonl",
    ]
    assert all(p.is_file() for p in paths)


def test_cli_export_writes_files_and_reports_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(RUNS, runs)
    out_dir = tmp_path / "out"
    steps = len(of_type(read_events(runs / "tiny-lr-high"), "step"))
    events = len(read_events(runs / "tiny-lr-high"))

    code = cli.main(["export", "tiny-lr-high", "--runs-dir", str(runs), "-o", str(out_dir)])

    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        f"exported tiny-lr-high to {out_dir}/",
        f"{out_dir / 'tiny-lr-high-metrics.csv'}  ({steps} steps)",
        f"{out_dir / 'tiny-lr-high-events.jsonl'}  ({events} events)",
    ]
    assert len(_rows(out_dir / "tiny-lr-high-metrics.csv")) == steps


def test_cli_export_writes_where_the_dashboard_does_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from loratop.tui import app
    from loratop.tui.models import export

    monkeypatch.chdir(tmp_path)

    assert cli.main(["export", str(RUNS / "tiny-r8")]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0] == "exported tiny-r8 to loratop-exports/", "it says where the files went"
    assert sorted(p.name for p in (tmp_path / "loratop-exports").iterdir()) == [
        "tiny-r8-events.jsonl", "tiny-r8-metrics.csv"
    ]  # fmt: skip
    assert not list(tmp_path.glob("*.csv")), "nothing in the current folder itself"
    assert app.EXPORT_DIR is export.EXPORT_DIR == Path("loratop-exports"), "the dashboard's x writes there too"


def test_cli_export_without_a_run_exports_the_latest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Like ``attach``, ``export`` alone means the latest run."""
    code = cli.main(["export", "--runs-dir", str(RUNS), "-o", str(tmp_path)])

    assert code == 0
    assert capsys.readouterr().out.splitlines()[0] == f"exported tiny-lr-high to {tmp_path}/"
    assert (tmp_path / "tiny-lr-high-metrics.csv").is_file()


def test_cli_export_with_no_runs_at_all_says_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["export", "--runs-dir", str(tmp_path / "runs"), "-o", str(tmp_path / "out")])

    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"loratop: no runs under {tmp_path / 'runs'}/ (start one with: loratop demo)"
    ]


def test_cli_export_of_a_missing_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["export", "nope", "--runs-dir", str(tmp_path), "-o", str(tmp_path / "out")])

    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"loratop: no run 'nope': not a folder with events.jsonl, nor a run under {tmp_path}/"
    ]
    assert not (tmp_path / "out").exists()


def test_cli_export_into_a_file_path_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")

    code = cli.main(["export", str(RUNS / "tiny-r8"), "-o", str(blocker)])

    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"loratop: cannot write to {blocker}: ")


def test_a_single_process_run_keeps_every_column_and_the_readme_names_each_one(tmp_path: Path) -> None:
    """Issue 26, item 12: the CSV's columns are the same for every run (a script may rely on them);
    a single process leaves the rank columns empty, never 0; the README lists every column, in order."""
    out = tmp_path / "m.csv"
    export_metrics_csv(RUNS / "tiny-r8", out)
    rows = _rows(out)
    assert tuple(rows[0]) == METRICS_HEADER
    assert {(r["ranks"], r["max_rank_gpu_used_bytes"], r["max_rank_rss_bytes"]) for r in rows} == {("", "", "")}

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    export = readme[readme.index("**Export.**") :]
    export = export[: export.index("\n\n")]
    where = [export.find(f"`{column}`") for column in METRICS_HEADER]
    missing = [column for column, at in zip(METRICS_HEADER, where, strict=True) if at < 0]
    assert not missing, f"README's Export paragraph does not name {missing}"
    assert where == sorted(where), "README lists the CSV's columns in another order"


def test_write_new_never_writes_over_a_file(tmp_path: Path) -> None:
    from loratop.tui.models.export import write_new

    first = write_new(tmp_path / "out", "compare-a-vs-b", ".svg", "one")
    second = write_new(tmp_path / "out", "compare-a-vs-b", ".svg", "two")

    assert (first.name, second.name) == ("compare-a-vs-b.svg", "compare-a-vs-b-2.svg")
    assert first.read_text() == "one" and second.read_text() == "two"
