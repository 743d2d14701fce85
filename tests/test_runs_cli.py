"""``loratop ls`` and ``loratop attach`` on runs found on disk."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest

from loratop.cli import main as cli
from loratop.core.run_summary import settle_finished_run
from loratop.core.runs import (
    SORT_KEYS,
    AmbiguousRun,
    RunNotFound,
    RunSummary,
    find_run,
    knob_label,
    list_runs,
    parent_label,
    resolve_parent,
    sort_runs,
    summarise_run,
)
from tests.conftest import RECORDED_RUNS as FIXTURE_RUNS
from tests.conftest import dead_status, live_status, loratop, of_type, status_of
from tests.conftest import read_events as read_fixture_events

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
    (live / "status.json").write_text(json.dumps(live_status(started_at=50.0)))
    dead = root / "dead-run"
    dead.mkdir()
    (dead / "events.jsonl").write_text("".join(lines[:40]))
    (dead / "status.json").write_text(json.dumps(dead_status(state="running", started_at=200.0)))


def test_list_runs_puts_running_first_and_tells_dead_from_live(tmp_path: Path) -> None:
    _make_runs(tmp_path)
    before = (tmp_path / "dead-run" / "status.json").read_bytes()
    runs = list_runs(tmp_path)
    assert [r.name for r in runs] == ["live-run", "dead-run", "done-run"]
    assert [r.status for r in runs] == ["running", "lost", "completed"]
    assert runs[1].step > 0
    assert (tmp_path / "dead-run" / "status.json").read_bytes() == before, "a listing says lost, never writes it"
    done = summarise_run(tmp_path / "done-run")
    assert done.step == 60 and done.max_steps == 60 and done.peak_vram is None and done.device == "cpu"
    assert done.last_loss is not None and abs(done.last_loss - 6.040285587310791) < 1e-9


def _files(root: Path) -> dict[str, tuple[int, int, bytes] | None]:
    """Every file and folder under ``root``: its size, its time and its bytes (``None`` for a folder's
    bytes); a folder's time changes when anything is made, moved or removed in it."""
    found: dict[str, tuple[int, int, bytes] | None] = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, b"" if path.is_dir() else path.read_bytes())
    return found


def test_listing_never_writes_into_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ls, the home screen's catalog, compare's pickers and find_run over runs finished without
    caches, running and lost leave every file and folder as it was, byte for byte and time for time:
    a finished run's caches are written by its end, a lost trainer is said lost, not recorded."""
    from loratop.core.runs import RunCatalog, read_run

    _make_runs(tmp_path)
    settled = tmp_path / "settled-run"  # one the way its trainer leaves it: index and summary
    shutil.copytree(tmp_path / "done-run", settled)
    assert settle_finished_run(settled)
    before = _files(tmp_path)
    listed = {r.name: r for r in list_runs(tmp_path)}
    assert {name: r.status for name, r in listed.items()} == {
        "live-run": "running", "dead-run": "lost", "done-run": "completed", "settled-run": "completed"
    }  # fmt: skip
    assert listed["done-run"].step == listed["settled-run"].step == 60
    catalog = RunCatalog(tmp_path)
    assert [r.status for r in catalog.runs()] == [r.status for r in catalog.runs()]  # a look, and a second
    assert cli.main(["ls", "--runs-dir", str(tmp_path)]) == 0
    assert "dead-run" in capsys.readouterr().out
    for run in ("done-run", "dead-run", "live-run"):
        read_run(tmp_path / run)  # what compare reads
    find_run(None, tmp_path)
    assert _files(tmp_path) == before


def test_ls_index_writes_the_caches_a_run_from_before_lacks(tmp_path: Path) -> None:
    """``ls --index``: the one listing that writes, and only the caches of finished runs."""
    from loratop.core.run_index import INDEX, load_index
    from loratop.core.run_summary import cached_facts

    _make_runs(tmp_path)
    hint = "1 finished run(s) read whole (no cache): loratop ls --index caches them"
    assert hint in _ls_on_a_terminal(tmp_path, 120)[1], "ls says how to stop paying for a run from before"
    assert cli.main(["ls", "--index", "--runs-dir", str(tmp_path)]) == 0
    assert cached_facts(tmp_path / "done-run") is not None and load_index(tmp_path / "done-run") is not None
    for run in ("live-run", "dead-run"):
        assert not any(p.name.startswith(INDEX) for p in (tmp_path / run).iterdir()), run
    assert status_of(tmp_path / "dead-run")["state"] == "running", "nor does it record a lost trainer"
    assert hint not in _ls_on_a_terminal(tmp_path, 120)[1]


def test_long_reads_and_writes_say_what_they_are_at_on_a_terminal_and_clear_the_line(tmp_path: Path) -> None:
    """``ls --index`` (each run it caches), ``export`` and ``next`` (the run they read): a line on
    a terminal while it lasts, rewritten in place and cleared before the answer; none piped."""
    _make_runs(tmp_path)
    clear = "\r\x1b[K"
    out, _ = _on_a_terminal("ls", "--index", "--runs-dir", str(tmp_path), stderr_too=True)
    steps = [f"{clear}caching {i}/3: {name}" for i, name in enumerate(["dead-run", "done-run", "live-run"], 1)]
    assert out.startswith("".join(steps) + clear + "RUN "), out[:300]
    out, _ = _on_a_terminal(
        "export", "done-run", "--runs-dir", str(tmp_path), "--out", str(tmp_path / "out"), stderr_too=True
    )
    assert out.startswith(f"{clear}exporting done-run …{clear}exported done-run to "), out[:200]
    shutil.copytree(FIXTURE_RUNS, tmp_path / "recorded")
    out, _ = _on_a_terminal("next", "tiny-r8", "--runs-dir", str(tmp_path / "recorded"), stderr_too=True)
    assert out.startswith(f"{clear}reading tiny-r8 …{clear}next run after tiny-r8 "), out[:200]
    piped = loratop("export", "done-run", "--runs-dir", str(tmp_path), "--out", str(tmp_path / "out2"))
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr


def test_ls_prints_the_table(tmp_path: Path) -> None:
    _make_runs(tmp_path)
    result = loratop("ls", "--runs-dir", str(tmp_path))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "RUN", "STATUS", "KNOBS", "STEP", "LOSS", "EVAL (BEST)", "PEAK VRAM", "GPU BUSY", "SPIKES", "SPILLS",
        "TIME", "PARENT",
    ]  # fmt: skip
    assert lines[3].startswith("done-run") and "completed" in lines[3] and "60/60" in lines[3] and "6.0403" in lines[3]
    loss = lines[0].index("LOSS")  # a running run's loss is its loss now, never shown as a final one
    assert lines[1].startswith("live-run") and re.match(r"\d+\.\d{4} now ", lines[1][loss:]), lines[1]
    assert re.match(r"6\.0403 +[^n ]", lines[3][loss:]), lines[3]
    assert "n/a (CPU)" in lines[3]
    assert "r8 α16 lr2e-3 b8×1 all7" in lines[3]  # no config.yaml: the knobs come from run_started


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

    from loratop.core.run_dir import trainer_alive

    assert trainer_alive(live_status())
    # A bare pid proves nothing (issue 12): it may be reused, or the folder copied from elsewhere.
    assert not trainer_alive({"pid": os.getpid()})
    assert not trainer_alive({"pid": 2**22 + 12345})
    assert trainer_alive({"launched_at": time.time() - 5}), "launched, trainer not started yet"
    assert not trainer_alive({"launched_at": time.time() - 3600}), "launched an hour ago and never started"


# -- run history: ls columns, knobs, parents, sorting --------------------------


def _ls(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, str]]:
    """``loratop ls`` in-process, each row as a dict by column header."""
    assert cli.main(["ls", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = re.split(r"\s{2,}", lines[0])
    return [dict(zip(header, re.split(r"\s{2,}", line), strict=True)) for line in lines[1:]]


def _move_parents(runs: Path, gone: Path) -> None:
    """Point the copies' recorded parents at a folder that surely does not exist."""
    for path in [*runs.glob("*/config.yaml"), *runs.glob("*/status.json")]:
        path.write_text(path.read_text().replace("/tmp/fx/", f"{gone}/"))


def test_ls_shows_each_runs_knobs_outcome_and_parent(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _move_parents(runs, tmp_path / "gone")

    rows = {row["RUN"]: row for row in _ls(capsys, "--runs-dir", str(runs))}

    assert {name: row["KNOBS"] for name, row in rows.items()} == {
        "tiny-r8": "r8 α16 lr2e-3 b8×1 all7",
        "tiny-r16": "r16 α32 lr1e-3 b8×1 all7",
        "tiny-lr-high": "r8 α16 lr3e-2 b8×1 all7",
    }
    # tiny-r16 and tiny-lr-high name a tiny-r8 folder that is gone: found as a sibling by name.
    assert {name: row["PARENT"] for name, row in rows.items()} == {
        "tiny-r8": "–",
        "tiny-r16": "tiny-r8",
        "tiny-lr-high": "tiny-r8",
    }
    assert {row["PEAK VRAM"] for row in rows.values()} == {"n/a (CPU)"}
    assert {row["SPILLS"] for row in rows.values()} == {"n/a"}
    assert rows["tiny-lr-high"]["SPIKES"] == "2" and rows["tiny-r8"]["SPIKES"] == "0"
    assert rows["tiny-lr-high"]["STEP"] == "120/120"
    assert rows["tiny-lr-high"]["TIME"] == "20s"


def _final_loss(run: str) -> float:
    return float(of_type(read_fixture_events(FIXTURE_RUNS / run), "step")[-1]["loss"])


def test_ls_sort_loss_puts_the_lowest_final_loss_first(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _ls(capsys, "--runs-dir", str(runs), "--sort", "loss")

    expected = sorted(["tiny-r8", "tiny-r16", "tiny-lr-high"], key=_final_loss)
    assert [row["RUN"] for row in rows] == expected == ["tiny-r8", "tiny-r16", "tiny-lr-high"]
    assert [row["LOSS"] for row in rows] == [f"{_final_loss(name):.4f}" for name in expected]


def test_ls_sort_by_name_and_spikes(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert [r["RUN"] for r in _ls(capsys, "--runs-dir", str(runs), "--sort", "name")] == [
        "tiny-lr-high", "tiny-r16", "tiny-r8"
    ]  # fmt: skip
    assert _ls(capsys, "--runs-dir", str(runs), "--sort", "spikes")[0]["RUN"] == "tiny-lr-high"


def test_ls_rejects_an_unknown_sort_key(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ls", "--runs-dir", str(runs), "--sort", "colour"])

    assert exit_info.value.code == 2
    assert "invalid choice: 'colour'" in capsys.readouterr().err


def test_ls_cuts_a_long_name_in_the_middle_only_on_a_narrow_terminal(runs: Path) -> None:
    from loratop.tui.models.panels import history_row
    from loratop.tui.models.run_table import history_table

    long_name = "llama-3.1-8b-instruct-r64-alpha128-lr2e-4-seq4096-20261129-075650"
    shutil.copytree(runs / "tiny-r8", runs / long_name)
    rows = [history_row(run, spills_cpu_text="n/a") for run in sort_runs(list_runs(runs), "name")]

    piped, _ = history_table(rows)
    assert any(line.startswith(long_name + " ") for line in piped), "piped: never cut"
    lines, left_out = history_table(rows, 60, on_terminal=True)
    assert all(len(line) <= 60 for line in lines) and "PARENT" in left_out
    cut = next(line.split()[0] for line in lines if "…" in line)
    head, tail = cut.split("…")
    assert long_name.startswith(head) and long_name.endswith(tail) and len(head) >= 10 and len(tail) >= 10
    assert find_run(cut, runs) == runs / long_name, "the cut name, as shown, is taken back"


def test_summary_reads_config_min_loss_duration_rate_and_parent(runs: Path) -> None:
    events = read_fixture_events(FIXTURE_RUNS / "tiny-r16")
    steps = of_type(events, "step")

    run = summarise_run(runs / "tiny-r16")

    assert run.config is not None and run.config["lora"]["r"] == 16
    assert run.min_loss == min(s["loss"] for s in steps)
    assert run.duration == of_type(events, "run_finished")[0]["t"] - events[0]["t"]
    assert run.tokens_per_s == (steps[-1]["tokens"] - steps[0]["tokens"]) / (steps[-1]["t"] - steps[0]["t"])
    assert run.parent == "/tmp/fx/tiny-r8"


def test_summary_falls_back_to_the_run_started_config(runs: Path) -> None:
    (runs / "tiny-r16" / "config.yaml").unlink()

    run = summarise_run(runs / "tiny-r16")

    started = of_type(read_fixture_events(FIXTURE_RUNS / "tiny-r16"), "run_started")[0]
    assert run.config == started["config"]
    assert run.parent == "/tmp/fx/tiny-r8"
    assert knob_label(run.config) == "r16 α32 lr1e-3 b8×1 all7"


def test_resolve_parent_prefers_the_recorded_path_then_a_sibling(runs: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "tiny-r8"
    shutil.copytree(runs / "tiny-r8", elsewhere)

    assert resolve_parent(runs / "tiny-r16", str(elsewhere)) == elsewhere  # still there: that one
    gone = tmp_path / "gone"
    assert resolve_parent(runs / "tiny-r16", str(gone / "tiny-r8")) == runs / "tiny-r8"  # gone: the sibling
    assert resolve_parent(runs / "tiny-r16", str(gone / "no-such-run")) is None
    assert resolve_parent(runs / "tiny-r16", str(gone / "tiny-r16")) is None  # never the run itself
    assert resolve_parent(runs / "tiny-r16", None) is None


def test_parent_label_names_a_run_a_config_file_or_nothing(runs: Path) -> None:
    assert parent_label(runs / "tiny-r16", str(runs.parent / "gone" / "tiny-r8")) == "tiny-r8"
    assert parent_label(runs / "tiny-r16", "/work/sample_configs/tiny-cpu-demo.yaml") == "tiny-cpu-demo.yaml"
    assert parent_label(runs / "tiny-r16", str(runs.parent / "gone" / "no-such-run")) == "no-such-run (gone)"
    assert parent_label(runs / "tiny-r16", None) == "–"


@pytest.mark.parametrize(
    ("targets", "label"),
    [
        (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "all7"),
        (["o_proj", "v_proj", "k_proj", "q_proj"], "attn"),
        (["gate_proj", "up_proj", "down_proj"], "mlp"),
        (["all-linear"], "all-linear"),
        ("all-linear", "all-linear"),
        (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"], "5mod"),
    ],
)
def test_knob_label_summarises_the_targets(targets: object, label: str) -> None:
    config = {
        "lora": {"r": 64, "lora_alpha": 128, "target_modules": targets},
        "training": {"learning_rate": 1e-4, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 8},
    }

    assert knob_label(config) == f"r64 α128 lr1e-4 b4×8 {label}"


def test_knob_label_without_a_config() -> None:
    assert knob_label(None) == "?"
    assert knob_label({"lora": {"r": 8}}) == "r8 α? lr? b?×? ?"


def _summary(name: str, loss: float | None, vram: int | None, started: float, status: str = "completed") -> RunSummary:
    return RunSummary(
        Path(name), status, 10, 10, loss, vram, 0, 0, started, "cuda", duration=started,
        best_eval_loss=None if loss is None else loss + 0.5,
    )  # fmt: skip


def test_sort_runs_puts_unknown_values_last() -> None:
    runs = [
        _summary("nan", math.nan, None, 1.0),
        _summary("none", None, 5, 2.0),
        _summary("high", 3.0, 10, 3.0),
        _summary("low", 1.0, 1, 4.0, status="running"),
    ]

    assert [r.name for r in sort_runs(runs, "loss")] == ["low", "high", "none", "nan"]
    assert [r.name for r in sort_runs(runs, "vram")] == ["high", "none", "low", "nan"]
    assert [r.name for r in sort_runs(runs, "started")] == ["low", "high", "none", "nan"]
    assert [r.name for r in sort_runs(runs, "duration")] == ["low", "high", "none", "nan"]
    assert sort_runs(runs, "status")[0].name == "low"
    assert [r.name for r in sort_runs(runs, "eval")] == ["low", "high", "none", "nan"]  # best eval, lowest first
    assert set(SORT_KEYS) == {"started", "name", "status", "loss", "eval", "vram", "duration", "spikes"}
    with pytest.raises(ValueError, match="unknown sort key"):
        sort_runs(runs, "colour")


# -- run names: whole in ls, and taken by every command in full, as a folder, or a prefix/suffix ----

DEMO_NAMES = {"tiny-r8": "tiny-cpu-demo-20261129-075650", "tiny-r16": "tiny-cpu-demo-20261129-080012"}
"""Copies of recorded runs under the names ``loratop demo`` gives (config stem, date, time)."""


def _demo_runs(runs: Path) -> Path:
    for source, name in DEMO_NAMES.items():
        shutil.copytree(runs / source, runs / name)
    child = runs / "tiny-cpu-demo-20261129-080012"  # a long parent name as well
    for file in ("config.yaml", "status.json"):
        (child / file).write_text(
            (child / file).read_text().replace("/tmp/fx/tiny-r8", str(runs / DEMO_NAMES["tiny-r8"]))
        )
    return runs


def _on_a_terminal(*args: str, columns: int = 100, stderr_too: bool = False) -> tuple[str, str]:
    """``loratop ARGS`` with its stdout (and with ``stderr_too`` its stderr) on a pseudo-terminal
    ``columns`` wide: what the terminal got, as written, and stderr where it was piped."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    cmd = [sys.executable, "-m", "loratop.cli.main", *args]
    stderr = slave if stderr_too else subprocess.PIPE
    process = subprocess.Popen(cmd, stdout=slave, stderr=stderr, env=env, cwd=Path(__file__).parent.parent)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, out + (err or b"")
    return out.decode(), (err or b"").decode()


def _ls_on_a_terminal(runs: Path, columns: int) -> tuple[list[str], str]:
    """``loratop ls`` with its stdout on a pseudo-terminal ``columns`` wide: the lines, and stderr."""
    out, err = _on_a_terminal("ls", "--runs-dir", str(runs), columns=columns)
    return out.replace("\r\n", "\n").splitlines(), err


@pytest.mark.parametrize("columns", [80, 120])
def test_ls_on_a_terminal_is_one_line_per_run_with_names_whole(runs: Path, columns: int) -> None:
    _demo_runs(runs)

    lines, err = _ls_on_a_terminal(runs, columns)

    assert len(lines) == 1 + len(list_runs(runs)), lines  # nothing wrapped onto a line of its own
    assert all(len(line) <= columns for line in lines), [len(line) for line in lines]
    assert {line.split()[0] for line in lines[1:]} == {r.name for r in list_runs(runs)}, "names whole"
    assert "…" not in "".join(lines)
    header = re.split(r"\s{2,}", lines[0])
    assert header[:2] == ["RUN", "STATUS"] and {"STEP", "LOSS", "KNOBS"} <= set(header)
    if columns == 120:
        assert "PARENT" in header
        child = next(line for line in lines if line.startswith("tiny-cpu-demo-20261129-080012"))
        assert child.endswith("tiny-cpu-demo-20261129-075650"), "the parent, whole, on the run's own line"
    assert all(len(line) <= columns for line in err.splitlines()), err  # the notes too
    said = " ".join(err.split())
    for title in set(HISTORY_TITLES) - set(header):
        assert title in said, f"{title} left out without a word: {err!r}"


HISTORY_TITLES = (
    "RUN", "STATUS", "KNOBS", "STEP", "LOSS", "EVAL (BEST)", "PEAK VRAM", "GPU BUSY", "SPIKES", "SPILLS", "TIME",
    "PARENT",
)  # fmt: skip
"""``ls``'s column titles, every column shown."""


def test_ls_at_80_columns_keeps_the_knobs_that_tell_reruns_apart_and_says_what_they_share(runs: Path) -> None:
    """Issue 26, item 8: at 80 columns ``ls`` dropped KNOBS (what tells reruns apart) but kept
    SPIKES, and its note ran past 80 columns."""
    _demo_runs(runs)

    lines, err = _ls_on_a_terminal(runs, 80)

    header = re.split(r"\s{2,}", lines[0])
    assert header[:5] == ["RUN", "STATUS", "KNOBS", "STEP", "LOSS"], header
    rows = {line.split()[0]: dict(zip(header, re.split(r"\s{2,}", line), strict=True)) for line in lines[1:]}
    assert rows["tiny-cpu-demo-20261129-080012"]["KNOBS"] == "r16 α32 lr1e-3"
    assert rows["tiny-cpu-demo-20261129-075650"]["KNOBS"] == "r8 α16 lr2e-3"
    assert rows["tiny-lr-high"]["KNOBS"] == "r8 α16 lr3e-2"
    assert "(KNOBS: what differs; every run has b8×1 all7)" in err
    assert all(len(line) <= 80 for line in [*lines, *err.splitlines()]), err


@pytest.mark.parametrize("columns", [None, "80"])
def test_ls_piped_prints_every_column_and_names_whole(runs: Path, columns: str | None) -> None:
    _demo_runs(runs)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | ({"COLUMNS": columns} if columns else {})

    result = loratop("ls", "--runs-dir", str(runs), env=env)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "…" not in result.stdout and result.stderr == ""
    assert {line.split()[0] for line in lines[1:]} == {r.name for r in list_runs(runs)}
    assert len(re.split(r"\s{2,}", lines[0])) == 12, "piped (to a script, a pager): every column"
    child = next(line for line in lines if line.startswith("tiny-cpu-demo-20261129-080012"))
    assert child.endswith("tiny-cpu-demo-20261129-075650")


def test_find_run_takes_a_full_name_a_folder_a_prefix_a_suffix_or_the_cut_name(runs: Path) -> None:
    _demo_runs(runs)
    shutil.copytree(runs / "tiny-r8", runs / "tiny-r8-again")
    first = runs / "tiny-cpu-demo-20261129-075650"

    assert find_run("tiny-cpu-demo-20261129-075650", runs) == first
    assert find_run(str(first), runs) == first
    assert find_run("261129-075650", runs) == first  # the time stamp, as a suffix
    assert find_run("075650", runs) == first
    assert find_run("tiny-cpu-demo-20261129-07", runs) == first  # a prefix
    assert find_run("tiny-cpu-demo-…261129-075650", runs) == first  # as a narrow `ls` shows it
    assert find_run("tiny-r8", runs) == runs / "tiny-r8", "a full name wins over a longer name it begins"
    with pytest.raises(RunNotFound):
        find_run("075650", runs, partial=False)


def test_an_ambiguous_run_lists_a_few_candidates_in_one_line(runs: Path) -> None:
    _demo_runs(runs)

    with pytest.raises(AmbiguousRun) as caught:
        find_run("tiny", runs)

    assert str(caught.value) == (
        f"'tiny' matches 5 runs under {runs}/: tiny-cpu-demo-20261129-075650, tiny-cpu-demo-20261129-080012, "
        "tiny-lr-high, tiny-r16 and 1 more; give more of the name (or its time stamp)"
    )
    assert len(caught.value.candidates) == 5


def test_an_unknown_run_suggests_the_closest_names(runs: Path) -> None:
    _demo_runs(runs)

    with pytest.raises(RunNotFound) as typo:
        find_run("tiny-r9", runs)
    with pytest.raises(RunNotFound) as middle:
        find_run("20261129-0756", runs)  # neither a prefix nor a suffix, but held by one name

    assert str(typo.value).endswith("; did you mean tiny-r8, tiny-r16, tiny-lr-high?")
    assert str(middle.value).endswith("; did you mean tiny-cpu-demo-20261129-075650?")


def _fake_app(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Replace the dashboard with a recorder of what it was asked to open."""
    from loratop.tui import app

    opened: list[dict[str, object]] = []

    class Recorder:
        return_code = 0  # what LoratopApp says after a clean end
        ended_on = None  # no run's monitor ended the session

        def __init__(self, run_dir: object = None, *args: object, **kwargs: object) -> None:
            opened.append({"run_dir": run_dir, **kwargs})

        def run(self) -> None:
            return None

    monkeypatch.setattr(app, "LoratopApp", Recorder)
    return opened


@pytest.mark.parametrize("given", ["261129-075650", "tiny-cpu-demo-20261129-07", "tiny-cpu-demo-20261129-075650"])
def test_every_command_that_takes_a_run_takes_a_prefix_or_suffix(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    _demo_runs(runs)
    run = runs / "tiny-cpu-demo-20261129-075650"
    opened = _fake_app(monkeypatch)
    attached: list[Path | None] = []
    monkeypatch.setattr(cli, "_dashboard", lambda run_dir, *a, **k: attached.append(run_dir) or 0)
    root = ["--runs-dir", str(runs)]

    assert cli.main(["attach", given, *root]) == 0
    assert cli.main(["edit", given, *root]) == 0
    assert cli.main(["export", given, *root, "-o", str(tmp_path / "out")]) == 0
    assert cli.main(["compare", given, "080012", *root, "--no-tui"]) == 0

    assert attached == [run]
    assert opened[0]["edit"] == run
    assert (tmp_path / "out" / f"{run.name}-metrics.csv").is_file()
    assert "tiny-cpu-demo-20261129-080012  r 8 → 16" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["attach", "edit", "export", "compare"])
def test_every_command_refuses_an_ambiguous_run_in_one_line(
    runs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    _demo_runs(runs)
    _fake_app(monkeypatch)
    args = [command, "tiny-cpu-demo-2026", *(["tiny-r8", "--no-tui"] if command == "compare" else [])]

    assert cli.main([*args, "--runs-dir", str(runs)]) == 2

    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"loratop: 'tiny-cpu-demo-2026' matches 2 runs under {runs}/: ")
    assert "tiny-cpu-demo-20261129-075650, tiny-cpu-demo-20261129-080012" in err[0]


@pytest.mark.parametrize("command", ["attach", "edit", "export", "compare"])
def test_every_command_suggests_the_closest_run_for_an_unknown_one(
    runs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    _demo_runs(runs)
    _fake_app(monkeypatch)
    args = [command, "tiny-r9", *(["tiny-r8", "--no-tui"] if command == "compare" else [])]

    assert cli.main([*args, "--runs-dir", str(runs)]) == 2

    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("loratop: ") and "tiny-r9" in err[0]
    assert "did you mean" in err[0] and "tiny-r8" in err[0]


# -- a run that failed while loading: nothing was measured, so nothing shows as 0 -----------------


def failed_while_loading(root: Path, name: str = "hub-fail-20261129-081500") -> Path:
    """A run whose trainer failed before the model loaded: a phase message, then ``run_finished``."""
    from loratop.core import events as ev

    run = root / name
    run.mkdir(parents=True)
    shutil.copy(FIXTURE_RUNS / "tiny-r8" / "config.yaml", run / "config.yaml")
    error = {"message": "OSError: meta-llama/Llama-3.1-8B is not a local folder", "traceback": []}
    lines = [
        ev.encode(0, ev.LOG, {"message": "loading meta-llama/Llama-3.1-8B"}, t=1000.0),
        ev.encode(1, ev.RUN_FINISHED, {"status": "failed", "duration_s": 1.0, "step": 0, "error": error}, t=1001.0),
    ]
    (run / "events.jsonl").write_bytes(b"".join(lines))
    return run


def test_ls_and_the_summary_show_a_dash_for_what_a_run_that_failed_while_loading_never_measured(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = failed_while_loading(runs)

    summary = summarise_run(run)
    row = next(r for r in _ls(capsys, "--runs-dir", str(runs)) if r["RUN"] == run.name)
    assert settle_finished_run(run)
    again = summarise_run(run)  # from the summary its end cached

    assert summary.status == "failed" and summary.spikes is None and summary.spills is None
    assert again.spikes is None and again.spills is None
    assert (row["SPIKES"], row["SPILLS"], row["PEAK VRAM"], row["LOSS"]) == ("–", "–", "–", "–")
    assert row["KNOBS"] == "r8 α16 lr2e-3 b8×1 all7"
    assert [r["SPIKES"] for r in _ls(capsys, "--runs-dir", str(runs), "--sort", "spikes")][-1] == "–", "unknown last"


def test_a_cached_summary_from_an_older_loratop_is_made_again(runs: Path) -> None:
    import json

    from loratop.core.run_index import INDEX
    from loratop.core.run_summary import SUMMARY

    run = failed_while_loading(runs)
    assert settle_finished_run(run)
    cache = run / INDEX / SUMMARY
    old = json.loads(cache.read_text())
    old.pop("version")
    old["facts"] |= {"spikes": 0, "spills": 0}  # what an older loratop cached
    cache.write_text(json.dumps(old))

    assert summarise_run(run).spikes is None
