"""Faults injected on purpose (issue 12): what survives, and that nothing is wrongly signalled.

Marked ``faults``; ``.ci/run`` runs them with everything else. Here: a pid in status.json
is signalled only when it is proven to be this run's trainer (same host, same boot, same
process start time). A reused pid, a folder copied from another machine, or a pid ≤ 1 is
never signalled: with pid -1, ``kill(-1, SIGUSR1)`` as root would end every process on the
machine. Every test that feeds such a pid to the dashboard replaces ``os.kill`` with a
recorder first, so a broken guard would fail the test instead of signalling anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loratop.cli import main as cli
from loratop.core.run_dir import PID_MAX, proven_trainer_pid, trainer_alive, valid_pid, why_not_proven
from loratop.tui.app import LoratopApp
from loratop.tui.screens.monitor_screen import MonitorScreen
from tests.conftest import dead_status, live_status, private_mount_namespace, state_drawn, until

pytestmark = pytest.mark.faults

RECORDED = Path(__file__).parent / "data" / "recorded_run" / "events.jsonl"
REAL_KILL = os.kill


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not a trainer: what a reused pid points at."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    if process.poll() is None:
        REAL_KILL(process.pid, signal.SIGKILL)  # the `kills` fixture may have replaced os.kill
    process.wait()


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every ``os.kill`` the dashboard makes, recorded instead of sent (probes with signal 0 pass)."""
    calls: list[tuple[int, int]] = []
    real = REAL_KILL

    def record(pid: int, sig: int) -> None:
        if sig == 0 and pid > 1:
            real(pid, 0)
            return
        calls.append((pid, sig))

    monkeypatch.setattr(os, "kill", record)
    return calls


def _live_looking_run(tmp_path: Path, status: dict[str, Any]) -> Path:
    """A run folder whose events stop mid-run (no run_finished), with the given status.json."""
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    lines = RECORDED.read_bytes().splitlines(keepends=True)
    (run_dir / "events.jsonl").write_bytes(b"".join(lines[:40]))
    (run_dir / "status.json").write_text(json.dumps(status))
    return run_dir


@pytest.mark.parametrize("pid", [-1, 0, 1, True, "12", 12.0, None, PID_MAX + 1, 99999999999, -(2**40)])
def test_a_pid_that_cannot_be_another_process_is_never_usable(pid: Any) -> None:
    status = {"pid": pid, "state": "running", "host": "x", "boot_id": "y", "pid_start_ticks": 1}
    assert valid_pid(pid) is None
    assert proven_trainer_pid(status) is None and not trainer_alive(status)
    assert "no usable trainer pid" in str(why_not_proven(status))


def test_a_reused_pid_or_a_copied_folder_proves_nothing(bystander: subprocess.Popen[bytes]) -> None:
    mine = live_status(bystander.pid)
    assert proven_trainer_pid(mine) == bystander.pid  # the real identity: proven
    reused = {**mine, "pid_start_ticks": mine["pid_start_ticks"] - 1}  # same pid, another process
    assert proven_trainer_pid(reused) is None and "belongs to another process" in str(why_not_proven(reused))
    copied = {**mine, "host": "gpu-box-7"}  # a runs/ folder copied from another machine
    assert proven_trainer_pid(copied) is None and "host 'gpu-box-7'" in str(why_not_proven(copied))
    rebooted = {**mine, "boot_id": "an-earlier-boot"}
    assert proven_trainer_pid(rebooted) is None and "booted" in str(why_not_proven(rebooted))
    bare = {"pid": bystander.pid}  # today's status.json: a pid and nothing to prove it by
    assert proven_trainer_pid(bare) is None and "no host recorded" in str(why_not_proven(bare))


@pytest.mark.parametrize("pid", [-1, 0, 1])
def test_c_and_s_never_signal_a_pid_of_one_or_less(tmp_path: Path, kills: list[Any], pid: int) -> None:
    run_dir = _live_looking_run(tmp_path, {**live_status(), "pid": pid, "state": "running"})
    assert _press_c_and_s(run_dir) and kills == []


def test_c_and_s_never_signal_a_reused_pid(
    tmp_path: Path, kills: list[Any], bystander: subprocess.Popen[bytes]
) -> None:
    identity = live_status(bystander.pid)
    run_dir = _live_looking_run(tmp_path, {**identity, "pid_start_ticks": identity["pid_start_ticks"] + 7})
    notes = _press_c_and_s(run_dir)
    assert kills == [] and bystander.poll() is None
    assert any("not signalling" in note for note in notes), notes


HOLD_LOCK = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); " \
    "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)"  # fmt: skip


def test_c_signals_a_proven_trainer(tmp_path: Path, kills: list[Any]) -> None:
    """The counterpart: a process with the run's identity that holds the run's lock, as every
    loratop trainer does, is this run's trainer: ``c`` sends it SIGUSR1 (recorded, not sent)."""
    run_dir = _live_looking_run(tmp_path, {"state": "running"})
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir / "trainer.lock")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        (run_dir / "status.json").write_text(json.dumps({**live_status(holder.pid), "state": "running"}))
        _press_c_and_s(run_dir, stop=False)
        assert kills == [(holder.pid, signal.SIGUSR1)]
    finally:
        REAL_KILL(holder.pid, signal.SIGKILL)
        holder.wait()


def test_c_and_s_never_signal_a_process_whose_identity_was_copied(
    tmp_path: Path, kills: list[Any], bystander: subprocess.Popen[bytes]
) -> None:
    """issue 24, item 7: host, boot id and start time are readable by anyone; a status.json
    that copies a live process's identity must not make ``c`` or ``s`` signal it."""
    run_dir = _live_looking_run(tmp_path, {**live_status(bystander.pid), "state": "running"})
    notes = _press_c_and_s(run_dir)
    assert kills == [] and bystander.poll() is None
    assert any(f"pid {bystander.pid} does not hold trainer.lock" in note for note in notes), notes


def test_a_trainer_lock_that_is_a_symlink_is_never_followed(tmp_path: Path) -> None:
    """issue 24, item 8: a trainer.lock planted as a symbolic link would have been opened,
    truncated and written through (any file the user can write)."""
    from loratop.core.run_dir import RunDirTaken, hold_run_dir

    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "trainer.lock").symlink_to(precious)
    with pytest.raises(RunDirTaken, match="is a symbolic link"):
        hold_run_dir(run_dir)
    assert precious.read_text() == "keep me"


def _press_c_and_s(run_dir: Path, stop: bool = True) -> list[str]:
    """Open the run's monitor, press ``c`` (and ``s`` + confirm); the notifications shown."""
    from textual.notifications import Notify

    app = LoratopApp(run_dir)
    notes: list[str] = []

    def hook(message: object) -> None:
        if isinstance(message, Notify):
            notes.append(message.notification.message)

    async def drive() -> None:
        async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            await until(pilot, lambda: screen.state.last_step > 0, 60, "the first step")
            await pilot.press("c")
            if stop:
                await pilot.press("s")
                await pilot.pause()
                await pilot.press("y")
            await pilot.pause()
            app.exit()

    asyncio.run(drive())
    return notes


@pytest.mark.parametrize("pid", [-1, 0, 1, 99999999999, "7"])
def test_ls_lists_a_run_with_an_impossible_pid_as_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pid: Any
) -> None:
    _live_looking_run(tmp_path, {"pid": pid, "state": "running", "started_at": 100.0})
    shutil.copytree(Path(__file__).parent / "data" / "runs" / "tiny-r8", tmp_path / "runs" / "tiny-r8")
    assert cli.main(["ls", "--runs-dir", str(tmp_path / "runs")]) == 0
    rows = capsys.readouterr().out.splitlines()
    r1 = next(row for row in rows if row.startswith("r1"))
    assert "running" not in r1 and "unknown" in r1
    assert any(row.startswith("tiny-r8") for row in rows)


# -- one folder per run, one trainer per folder (item 1) ------------------------------------


def test_launches_racing_for_one_stamped_folder_get_one_folder_each(tmp_path: Path) -> None:
    import threading

    from loratop.core.run_dir import claim_run_dir

    path = tmp_path / "runs" / "tiny-cpu-demo-20261201-101500"
    start = threading.Barrier(8)
    claimed: list[Path] = []

    def claim() -> None:
        start.wait()
        claimed.append(claim_run_dir(path))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in claimed) == sorted([path.name] + [f"{path.name}-{n}" for n in range(2, 9)])


def test_a_named_folder_that_holds_a_run_is_refused_not_shared(tmp_path: Path) -> None:
    from loratop.core.run_dir import RunDirTaken, claim_run_dir

    assert claim_run_dir(tmp_path / "my-run") == tmp_path / "my-run"
    with pytest.raises(RunDirTaken, match="already holds a run"):
        claim_run_dir(tmp_path / "my-run")


def test_a_trainer_started_by_hand_on_a_finished_run_refuses_to_train_into_it(tmp_path: Path) -> None:
    """issue 24, item 8: it retrained into the folder and overwrote the finished run's adapter."""
    run_dir = tmp_path / "tiny-r8"
    shutil.copytree(Path(__file__).parent / "data" / "runs" / "tiny-r8", run_dir)
    before = (run_dir / "events.jsonl").read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "loratop.trainer", str(run_dir / "config.yaml"), "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "already holds a run (events.jsonl is not empty); not training into it" in done.stderr
    assert "Traceback" not in done.stderr
    assert (run_dir / "events.jsonl").read_bytes() == before


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_numpy_cannot_take_is_refused_by_check(seed: str, capsys: pytest.CaptureFixture[str]) -> None:
    """issue 24, item 8: it passed check, then the trainer died with a numpy traceback."""
    assert cli.main(["check", str(DEMO), "--set", f"training.seed={seed}"]) == 2
    out = capsys.readouterr()
    assert "training.seed" in out.err + out.out and "Traceback" not in out.err + out.out


def test_escape_sequences_in_a_run_name_never_reach_the_terminal_raw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """issue 24, item 8: a run folder named with an escape sequence (retitle the window, clear
    the screen) was printed raw by ls; it is written out instead, and the run still found."""
    runs = tmp_path / "runs"
    name = "evil\x1b]0;pwned\x07\x1b[2J-run"
    shutil.copytree(Path(__file__).parent / "data" / "runs" / "tiny-r8", runs / name)
    shutil.copytree(Path(__file__).parent / "data" / "runs" / "tiny-r16", runs / "tiny-r16")
    assert cli.main(["ls", "--runs-dir", str(runs)]) == 0
    assert cli.main(["compare", "tiny-r16", name, "--runs-dir", str(runs), "--no-tui"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J-run" in out


def test_a_stopped_trainer_reads_paused_with_how_to_resume_it(
    tmp_path: Path, bystander: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    """issue 24, item 8: a SIGSTOPped trainer read RUNNING. The process here is this test's own
    child, standing in for a trainer whose identity status.json proves."""
    from loratop.core.runs import list_runs, read_run
    from loratop.tui.models.panels import outcome_text

    run_dir = _live_looking_run(tmp_path, {**live_status(bystander.pid), "state": "running"})
    REAL_KILL(bystander.pid, signal.SIGSTOP)
    try:
        _wait_for(lambda: Path(f"/proc/{bystander.pid}/stat").read_text().rpartition(")")[2].split()[0] == "T")
        (run,) = list_runs(run_dir.parent)
        assert run.status == "paused" and run.is_running
        state, _ = read_run(run_dir)
        assert (
            outcome_text(state)
            == f"the trainer (pid {bystander.pid}) is stopped: kill -CONT {bystander.pid} resumes it"
        )
        assert cli.main(["ls", "--runs-dir", str(run_dir.parent)]) == 0
        assert "paused" in capsys.readouterr().out
    finally:
        REAL_KILL(bystander.pid, signal.SIGCONT)
    _wait_for(lambda: list_runs(run_dir.parent)[0].status == "running")


def _wait_for(condition: Any, timeout: float = 30.0) -> None:
    """Wait on a condition (never a fixed sleep a busy machine can outrun)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def run_dir_held(run_dir: Path) -> bool:
    """Whether some process holds the folder's trainer.lock (a probe: it takes nothing)."""
    import fcntl

    fd = os.open(run_dir / "trainer.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_second_trainer_on_a_held_folder_exits_without_writing(tmp_path: Path) -> None:
    from loratop.core.run_dir import hold_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_bytes(RECORDED.read_bytes())
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert not run_dir_held(run_dir)
    fd = hold_run_dir(run_dir)  # this test process plays the running trainer
    try:
        assert run_dir_held(run_dir)
        config = Path(__file__).parent.parent / "sample_configs" / "tiny-cpu-demo.yaml"
        result = subprocess.run(
            [sys.executable, "-m", "loratop.trainer", str(config), "--run-dir", str(run_dir)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(fd)
    assert result.returncode == 2
    assert f"another trainer (pid {os.getpid()}) is writing into this run folder" in result.stderr
    after = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert {k: v for k, v in after.items() if k != "trainer.lock"} == {
        k: v for k, v in before.items() if k != "trainer.lock"
    }
    assert not run_dir_held(run_dir)


@pytest.mark.slow
def test_eight_launches_at_once_in_one_folder_make_eight_runs(tmp_path: Path) -> None:
    """The same second, the same time-stamped name: eight folders, each its own config and events."""
    loratop = Path(sys.executable).parent / "loratop"
    name = "runs/par-20261201-101500"
    processes = [
        subprocess.Popen(
            [
                str(loratop),
                "run",
                "tiny-cpu-demo",
                "--no-tui",
                "--set",
                "training.max_steps=1",
                "--set",
                "data.max_rows=16",
                "--set",
                f"training.seed={seed}",
                "--set",
                f"output_dir={name}",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for seed in range(8)
    ]
    outputs = [p.communicate(timeout=900)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0] * 8, outputs
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 8
    seeds = set()
    for folder in folders:
        from loratop.core.events import read_events

        events, skipped = read_events(str(folder / "events.jsonl"))
        assert skipped == 0 and [e["seq"] for e in events] == list(range(len(events)))
        started = [e for e in events if e["type"] == "run_started"]
        assert len(started) == 1 and started[0]["run_dir"] == str(folder.resolve())
        seeds.add(started[0]["config"]["training"]["seed"])
        assert str(folder.resolve()) in (folder / "config.yaml").read_text()
        assert (folder / "adapter" / "adapter_config.json").is_file()
    assert seeds == set(range(8)), "each folder trained its own launch's config"


# -- damaged metadata (item 6) ----------------------------------------------------------------

DAMAGED_STATUS = [
    '{"started_at": "x"}', '{"launched_at": "yesterday"}', '{"pid": 99999999999}', "[1, 2]", "not json",
    '{"started_at": null, "pid": "x", "status": 7}', '{"parent": 5, "ended_at": true}', "",
]  # fmt: skip
DAMAGED_CONFIG = ["lora: [1", "- 1", "training: 5", "parent: 7", "lora: {r: x}", "\\x00\\xff"]


def test_damaged_status_or_config_leaves_every_run_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loratop.core.runs import list_runs

    runs = tmp_path / "runs"
    healthy = Path(__file__).parent / "data" / "runs" / "tiny-r8"
    shutil.copytree(healthy, runs / "healthy")
    for i, text in enumerate(DAMAGED_STATUS):
        shutil.copytree(healthy, runs / f"status-{i}")
        (runs / f"status-{i}" / "status.json").write_text(text)
    for i, text in enumerate(DAMAGED_CONFIG):
        shutil.copytree(healthy, runs / f"config-{i}")
        (runs / f"config-{i}" / "config.yaml").write_text(text)
    listed = {run.name: run for run in list_runs(runs)}  # what the home screen shows, too
    assert len(listed) == 1 + len(DAMAGED_STATUS) + len(DAMAGED_CONFIG)
    assert all(run.status == "completed" and run.step == 60 for run in listed.values())  # from the events
    assert not listed["healthy"].damaged
    for name in ("status-0", "status-1", "status-2", "status-3", "status-4", "config-0", "config-2", "config-3"):
        assert listed[name].damaged, name
    assert cli.main(["ls", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "damaged: status-0: status.json started_at='x'" in out
    assert "damaged: config-2: config.yaml training: 5" in out
    assert out.count("completed (damaged)") == sum(1 for run in listed.values() if run.damaged)


# -- the smaller ones (item 8) ----------------------------------------------------------------

DEMO = Path(__file__).parent.parent / "sample_configs" / "tiny-cpu-demo.yaml"


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_a_non_finite_learning_rate_is_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(DEMO), "--set", f"training.learning_rate={value}"]) == 2
    err = capsys.readouterr().err
    assert "training.learning_rate" in err and "finite" in err and "Traceback" not in err


def test_an_empty_config_is_named_and_a_huge_one_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n# nothing here\n")
    assert cli.main(["check", str(empty)]) == 0  # valid (all defaults), but said out loud
    assert f"warning: {empty} is empty: every value is a default" in capsys.readouterr().err
    huge = tmp_path / "huge.yaml"
    huge.write_text("rows:\n" + "  - a fairly long line of data that is not a config\n" * 40_000)  # ~2 MiB
    assert cli.main(["check", str(huge)]) == 2
    assert "too big for a run config" in capsys.readouterr().err


def test_trust_remote_code_draws_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(DEMO), "--set", "model.trust_remote_code=true"]) == 0
    assert "warning: model.trust_remote_code = true: trust_remote_code = true runs the Python code" in (
        capsys.readouterr().out
    )


def test_estimate_into_a_closed_pipe_prints_no_traceback() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that has already gone: every write meets EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "loratop.cli.main", "estimate", str(DEMO)],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert result.returncode == 0 and "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def _headless_run_at_its_first_step(run_dir: Path, max_steps: int) -> subprocess.Popen[str]:
    """``loratop run --no-tui`` of the demo, once it has printed its first step line."""
    cli_process = subprocess.Popen(
        [sys.executable, "-m", "loratop.cli.main", "run", str(DEMO), "--no-tui",
         "--set", f"output_dir={run_dir}", "--set", f"training.max_steps={max_steps}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert cli_process.stdout is not None
    for line in cli_process.stdout:
        if line.startswith("step "):
            break
    return cli_process


@pytest.mark.slow
def test_double_ctrl_c_stops_watching_without_a_traceback_and_the_stop_happens(tmp_path: Path) -> None:
    from tests.conftest import status_of, wait_for_exit

    run_dir = tmp_path / "run"
    cli_process = _headless_run_at_its_first_step(run_dir, max_steps=400)
    assert cli_process.stdout is not None
    cli_process.send_signal(signal.SIGINT)
    seen = []
    for line in cli_process.stdout:  # the second Ctrl-C only once the first was taken: its line says so
        seen.append(line)
        if line.startswith("stopping at the next step boundary"):
            break
    cli_process.send_signal(signal.SIGINT)
    rest = "".join(seen) + cli_process.stdout.read()
    assert cli_process.wait(timeout=60) == 130
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    assert "stopped watching; the trainer" in rest and "still stops at the next step boundary" in rest
    wait_for_exit(status_of(run_dir)["pid"], 120)
    assert status_of(run_dir)["status"] == "stopped"  # what the README says: the stop still happens
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    # Nobody watched it finish: the trainer itself left the summary ls reads.
    assert (run_dir / ".loratop-index" / "summary.json").is_file()


def test_the_damage_check_knows_every_config_section() -> None:
    """core.runs lists the config's sections by hand (importing the schema would load pydantic
    into the home screen); keep that list the schema's."""
    from pydantic import BaseModel

    from loratop.core import runs
    from loratop.preflight.config import RunConfig

    sections = {
        name
        for name, info in RunConfig.model_fields.items()
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
    }
    assert set(runs._CONFIG_SECTIONS) == sections


# -- an output folder that cannot be made or written (item 5, in part) ------------------------


@pytest.mark.parametrize("where", ["under-a-file", "name-too-long"])
def test_an_unusable_output_dir_is_one_line_and_exit_2(tmp_path: Path, where: str) -> None:
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "afile" / "run" if where == "under-a-file" else tmp_path / ("x" * 300)
    result = subprocess.run(
        [sys.executable, "-m", "loratop.cli.main", "run", str(DEMO), "--no-tui", "--set", f"output_dir={out}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert ("cannot create the run folder" if where == "under-a-file" else "File name too long") in result.stderr
    assert "nothing was launched" in result.stderr


def test_a_launch_that_cannot_write_its_folder_frees_the_name_again(tmp_path: Path) -> None:
    import resource

    from loratop.core.run_dir import RunDirError
    from loratop.preflight.config import load_config
    from loratop.preflight.launcher import launch

    run_dir = tmp_path / "run"
    config = load_config(DEMO, {"output_dir": str(run_dir)}, check_files=False)
    # The claim (an empty events.jsonl) fits; config.yaml does not: a disk that fills at launch.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (256, hard))
    try:
        with pytest.raises(RunDirError, match="cannot write the run folder"):
            launch(config)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert not (run_dir / "events.jsonl").exists(), "the failed launch's claim must not block the next one"
    assert not (run_dir / "status.json").exists()


# -- an output folder that holds your own files (item 4) --------------------------------------


def _users_folder(folder: Path) -> dict[str, bytes]:
    """A folder of the user's own: a commented config.yaml (a loratop file name) and notes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("# my own settings: keep these comments\nlr: 3e-4  # tuned by hand\n")
    (folder / "notes.txt").write_text("not loratop's\n")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("how", ["named", "dot"])
def test_run_into_a_folder_of_your_own_files_is_one_line_and_exit_2(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``loratop run tiny-cpu-demo --no-tui --set output_dir=.`` in a folder holding your config.yaml."""
    mine = tmp_path / "mine"
    before = _users_folder(mine)
    if how == "dot":
        monkeypatch.chdir(mine)
    out = "." if how == "dot" else str(mine)
    # Tiny knobs: a broken guard costs a seconds-long run, not the whole demo.
    argv = ["run", "tiny-cpu-demo", "--no-tui", "--set", f"output_dir={out}"]
    argv += ["--set", "training.max_steps=1", "--set", "data.max_rows=16"]

    assert cli.main(argv) == 2

    captured = capsys.readouterr()
    problems = [line for line in captured.err.splitlines() if "holds files loratop did not make" in line]
    assert problems == [
        f"--set output_dir: output_dir = {out!r}: holds files loratop did not make (config.yaml, notes.txt); "
        "choose a new or empty folder"
    ], captured.err
    assert "nothing was launched" in captured.err and "Traceback" not in captured.err
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before, "nothing written, nothing replaced"


def test_check_names_a_folder_of_your_own_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    _users_folder(mine)
    for n in range(3):
        (mine / f".hidden-{n}").write_text("")

    assert cli.main(["check", "tiny-cpu-demo", "--set", f"output_dir={mine}"]) == 2

    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"--set output_dir: output_dir = {str(mine)!r}: holds files loratop did not make "
        "(config.yaml, notes.txt, .hidden-0, …); choose a new or empty folder",
        "loratop: 1 problem in the config; nothing was launched",
    ]


@pytest.mark.parametrize("entries", [[".env"], ["config.yaml"], ["adapter/"], ["a", "b", "c", ".git/"]])
def test_the_claim_refuses_a_folder_of_your_own_files_without_writing(tmp_path: Path, entries: list[str]) -> None:
    """The claim is the last guard (a folder filled between check and launch, the dashboard's
    launch): even a hidden file or one of loratop's own names, with no events.jsonl, is not ours."""
    from loratop.core.run_dir import RunDirNotEmpty, claim_run_dir

    folder = tmp_path / "mine"
    folder.mkdir()
    for name in entries:
        if name.endswith("/"):
            (folder / name.rstrip("/")).mkdir()
        else:
            (folder / name).write_text("mine")
    before = sorted(os.listdir(folder))

    with pytest.raises(RunDirNotEmpty) as refused:
        claim_run_dir(folder)

    shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
    assert str(refused.value) == f"{folder}: holds files loratop did not make ({shown}); choose a new or empty folder"
    assert sorted(os.listdir(folder)) == before


def test_the_dashboard_checks_and_launches_off_the_ui_thread_once_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 27, item 3: the checks before a launch (data rows, a hub probe of up to 3 s) and
    the launch itself run on a worker, so the screen stays live; a second press while one is
    under way starts nothing."""
    import threading

    from loratop.core.run_dir import RunDirError
    from loratop.preflight import launcher
    from loratop.preflight.config import load_config

    where: list[bool] = []
    release = threading.Event()

    def slow_refusal(*args: Any, **kwargs: Any) -> Any:
        where.append(threading.current_thread() is threading.main_thread())
        release.wait(10)  # a slow hub probe: the UI thread must not be the one waiting
        raise RunDirError("stopped here by the test")  # no trainer

    monkeypatch.setattr(launcher, "launch", slow_refusal)
    config = load_config(DEMO, {"output_dir": str(tmp_path / "r1")}, check_files=False)
    app = LoratopApp(runs_root=tmp_path / "runs")

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            first = app.launch_config(config, None)
            await until(pilot, lambda: bool(where), 10, "the launch to start")
            await pilot.press("question_mark")  # the UI answers while the launch waits
            await until(pilot, lambda: "HelpScreen" in type(app.screen).__name__, 5, "the help screen")
            assert app.launch_config(config, None) is first, "a second launch while one is under way"
            release.set()
            await first.wait()
            assert first.result is None

    asyncio.run(drive())
    assert where == [False]


def test_a_launch_the_box_refuses_is_a_notice_not_a_silent_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launch worker meets an OSError (no process can be started: EAGAIN): it says so, like
    any refusal, and its result is no run."""
    import errno

    from loratop.preflight import launcher
    from loratop.preflight.config import load_config

    def no_process(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(launcher, "launch", no_process)
    config = load_config(DEMO, {"output_dir": str(tmp_path / "r1")}, check_files=False)
    app = LoratopApp(runs_root=tmp_path / "runs")
    notices: list[tuple[str, str]] = []

    async def drive() -> None:
        async with app.run_test(size=(100, 30)):
            app.notify = lambda message, **kw: notices.append((message, kw.get("severity", "")))  # type: ignore[method-assign]
            worker = app.launch_config(config, None)
            await worker.wait()
            assert worker.result is None

    asyncio.run(drive())
    assert notices[-1] == (f"{os.strerror(errno.EAGAIN)} (starting the trainer)", "error")


def test_the_dashboard_launch_into_a_folder_of_your_own_files_is_a_notice(tmp_path: Path) -> None:
    from loratop.preflight.config import load_config

    mine = tmp_path / "mine"
    before = _users_folder(mine)
    config = load_config(DEMO, {"output_dir": str(mine)}, check_files=False)  # filled after its check
    app = LoratopApp(runs_root=tmp_path / "runs")
    notices: list[tuple[str, str]] = []
    seen: dict[str, Any] = {}

    async def drive() -> None:
        async with app.run_test(size=(100, 30)):
            real_notify = app.notify

            def record(message: str, **kwargs: Any) -> None:
                notices.append((message, kwargs.get("severity", "information")))
                real_notify(message, **kwargs)

            app.notify = record  # type: ignore[method-assign]
            worker = app.launch_config(config, None)
            await worker.wait()
            seen["launched"] = worker.result

    asyncio.run(drive())
    assert seen["launched"] is None
    assert notices[0][1] == "information" and notices[0][0].startswith("checking and launching")
    assert notices[1:] == [(f"{mine}: holds files loratop did not make (config.yaml, notes.txt); "
                            "choose a new or empty folder", "error")]  # fmt: skip
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before


def test_an_empty_existing_folder_is_still_claimed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loratop.core.run_dir import claim_run_dir

    folder = tmp_path / "made-for-it"
    folder.mkdir()
    assert cli.main(["check", "tiny-cpu-demo", "--set", f"output_dir={folder}"]) == 0
    assert claim_run_dir(folder) == folder
    assert os.listdir(folder) == ["events.jsonl"]


def test_a_stamped_folder_that_holds_your_files_moves_on_to_the_next_suffix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from loratop.core.run_dir import claim_run_dir

    stamped = tmp_path / "runs" / "tiny-cpu-demo-20261201-101500"
    before = _users_folder(stamped)
    assert cli.main(["check", "tiny-cpu-demo", "--set", f"output_dir={stamped}"]) == 0  # it will move on

    assert claim_run_dir(stamped) == stamped.with_name(f"{stamped.name}-2")
    assert {p.name: p.read_bytes() for p in stamped.iterdir()} == before
    assert os.listdir(stamped.with_name(f"{stamped.name}-2")) == ["events.jsonl"]


# -- a trainer killed without a word (item 3) ------------------------------------------------


@pytest.mark.slow
def test_kill_9_under_the_dashboard_reads_lost_with_its_cause_and_the_clock_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The launching dashboard reaps its trainer (no zombie) and names the signal from its exit code."""
    from textual.widgets import Static

    from loratop.preflight.config import load_config
    from loratop.preflight.launcher import launch
    from tests.conftest import status_of

    config = load_config(DEMO, {"output_dir": str(tmp_path / "runs" / "k9"), "training.max_steps": 3000})
    run = launch(config, DEMO)
    app = LoratopApp(run.run_dir, run.events_fd, process=run.process)
    seen: dict[str, Any] = {}

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            await until(pilot, lambda: screen.state.last_step >= 3, 180, "the first steps")
            REAL_KILL(run.process.pid, signal.SIGKILL)  # our own child: nothing else can have its pid
            await until(pilot, lambda: screen.state.trainer_gone, 30, "the dashboard to notice")
            await state_drawn(pilot, screen)
            seen["returncode"] = run.process.returncode  # reaped by the dashboard, while it runs
            seen["header"] = str(app.screen.query_one("#run-header", Static).render())
            await pilot.pause(1.5)
            seen["header_later"] = str(app.screen.query_one("#run-header", Static).render())
            seen["outcome"] = str(app.screen.query_one("#outcome", Static).render())
            seen["step"] = screen.state.last_step
            await pilot.press("q")  # no longer live: quits without asking

    asyncio.run(drive())
    assert seen["returncode"] == -signal.SIGKILL
    assert "LOST" in seen["header"] and "ETA –" in seen["header"]
    assert seen["header_later"] == seen["header"], "the elapsed clock stops when the trainer is gone"
    assert seen["outcome"].startswith(f"killed by SIGKILL at step {seen['step']}")
    status = status_of(run.run_dir)
    assert status["state"] == "lost" and status["lost_cause"] == "killed by SIGKILL"
    assert status["exit_code"] == -9 and status["last_step"] == seen["step"]
    capsys.readouterr()
    assert cli.main(["ls", "--runs-dir", str(tmp_path / "runs")]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("k9"))
    assert row.split()[1] == "lost"


@pytest.mark.slow
def test_kill_9_under_no_tui_names_the_signal_and_ls_agrees(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import status_of

    run_dir = tmp_path / "runs" / "k9"
    cli_process = _headless_run_at_its_first_step(run_dir, max_steps=3000)
    assert cli_process.stdout is not None
    pid = proven_trainer_pid(status_of(run_dir))
    assert pid is not None and pid != cli_process.pid
    REAL_KILL(pid, signal.SIGKILL)
    rest = cli_process.stdout.read()
    assert cli_process.wait(timeout=60) == 1
    assert "error: trainer killed by SIGKILL at step " in rest and "OOM killer" in rest
    assert "Traceback" not in rest
    # Issue 26, item 10: the diagnosis is the last thing printed, where an 80×24 terminal keeps
    # it in view; the Trainer's per-step printouts (~280 characters each) are not repeated.
    lines = rest.rstrip("\n").split("\n")
    assert lines[-3].startswith("error: trainer killed by SIGKILL at step "), lines[-6:]
    assert "OOM killer" in lines[-2] and lines[-1] == f"  full log: {run_dir / 'trainer.log'}", lines[-6:]
    assert "{'loss'" not in rest
    last_step = max((i for i, line in enumerate(lines) if line.startswith("step ")), default=-1)
    after_steps = lines[last_step + 1 :]
    assert len(after_steps) <= 12 and all(len(line) <= 100 for line in after_steps[:-1]), after_steps
    # Issue 26, item 13, on the same real run: the start banner names the libraries (the event
    # and trainer.log), and the memory samples carry the CPU figures the ETA hint reads.
    from tests.conftest import of_type, read_events

    events = read_events(run_dir)
    banner = next(e["message"] for e in of_type(events, "log") if e["message"].startswith("torch "))
    assert all(f" · {name} " in banner for name in ("transformers", "peft", "bitsandbytes", "trl", "Python"))
    assert f"loratop: {banner}\n" in (run_dir / "trainer.log").read_text()
    hosts = [e["host"] for e in of_type(events, "memory")]
    assert any(isinstance(h.get("cpu_cores"), int) and h["cpu_trainer"] >= 0 for h in hosts[1:]), hosts[:3]
    status = status_of(run_dir)
    assert status["state"] == "lost" and status["lost_cause"] == "killed by SIGKILL" and status["exit_code"] == -9
    capsys.readouterr()
    assert cli.main(["ls", "--runs-dir", str(tmp_path / "runs")]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("k9"))
    assert row.split()[1] == "lost"


def test_a_lost_trainers_log_tail_keeps_what_may_say_why_on_one_row_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26, item 10: of a real CPU demo run's log, the per-step printouts, progress bars and
    warnings known to be harmless are left out; a line that may say why the trainer died is kept
    (cut to the terminal's width, with where the rest is: the full log, named after it)."""
    import io

    from loratop.cli.headless import _print_log_tail

    monkeypatch.setenv("COLUMNS", "80")  # the terminal's width, as shutil reads it
    recorded = (Path(__file__).parent / "data" / "trainer-cpu-demo.log").read_bytes()
    last_words = "Fatal Python error: Segmentation fault in a C extension, " + "with its long explanation " * 8
    log = tmp_path / "trainer.log"
    log.write_bytes(recorded + last_words.encode() + b"\n" + recorded.split(b"\n")[-2] + b"\n")
    out = io.StringIO()
    _print_log_tail(log, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "last lines of trainer.log (metric printouts, bars and harmless warnings left out):"
    assert lines[1:] == ["  " + last_words[:77] + "…"], lines

    log.write_bytes(recorded)  # nothing in it says why
    out = io.StringIO()
    _print_log_tail(log, out)
    assert out.getvalue().startswith("the last lines of trainer.log say nothing of why")


def test_a_trainer_found_gone_later_is_said_lost_by_ls_without_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nobody watched when it died: `ls` proves it gone (its pid is free) and says lost, from the
    verdict in memory; it never writes status.json (attach, which watches, records it: below)."""
    from loratop.core.runs import summarise_run
    from tests.conftest import dead_status

    run_dir = _live_looking_run(tmp_path, dead_status(state="running", started_at=100.0))
    before = (run_dir / "status.json").read_bytes()
    for _ in range(2):
        assert cli.main(["ls", "--runs-dir", str(tmp_path / "runs")]) == 0
        row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("r1"))
        assert row.split()[1] == "lost"
    assert (run_dir / "status.json").read_bytes() == before
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_bytes().splitlines()]
    summary = summarise_run(run_dir)
    assert summary.status == "lost"
    assert summary.duration == events[-1]["t"] - events[0]["t"], "the end is its last sign of life, not the look"


def test_attach_to_a_dead_trainer_says_lost_and_stops_the_clock(tmp_path: Path) -> None:
    from textual.widgets import Static

    from tests.conftest import dead_status, status_of

    run_dir = _live_looking_run(tmp_path, dead_status(state="running", started_at=100.0))
    app = LoratopApp(run_dir)
    seen: dict[str, str] = {}

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            await until(pilot, lambda: screen.state.trainer_gone, 20, "attach to notice")
            await state_drawn(pilot, screen)
            seen["header"] = str(app.screen.query_one("#run-header", Static).render())
            seen["outcome"] = str(app.screen.query_one("#outcome", Static).render())

    asyncio.run(drive())
    assert "LOST" in seen["header"] and "ETA –" in seen["header"]
    assert seen["outcome"].startswith("trainer gone, no report (last step ")
    assert status_of(run_dir)["state"] == "lost"


def test_a_status_that_proves_nothing_is_not_recorded_lost(tmp_path: Path) -> None:
    """A pid from another host may still train there: `unknown`, and status.json is left as it is."""
    from loratop.core.runs import summarise_run

    status = live_status(host="gpu-box-7", state="running")
    run_dir = _live_looking_run(tmp_path, status)
    summary = summarise_run(run_dir)
    assert summary.status == "unknown"
    assert json.loads((run_dir / "status.json").read_text()) == status


# -- a full disk during the run (item 4) ---------------------------------------------------------

FILL_AFTER_STEPS = r"""
import os, shutil, subprocess, sys, time
from pathlib import Path


def fill_after_steps(process, events, mount, steps=3):
    # Once the run's events.jsonl (events(): its path, or None) holds `steps` steps, fill the disk.
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        path = events()
        if path is not None and path.exists() and path.read_bytes().count(b'"type":"step"') >= steps:
            break
        time.sleep(0.2)
    with open(mount / "filler", "wb", buffering=0) as filler:  # the disk fills up under the run
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError:
            pass
"""
"""What both full-disk scripts start with: wait for a run's first steps, then fill its disk."""

FULL_DISK_SCRIPT = (
    FILL_AFTER_STEPS
    + r"""
mount, out, demo, leave, *sets = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), *sys.argv[5:]
run_dir = mount / "runs" / "full"
with open(out / "cli.out", "w") as log:
    cli = subprocess.Popen(
        [sys.executable, "-m", "loratop.cli.main", "run", demo, "--no-tui", "--set", f"output_dir={run_dir}",
         "--set", "training.max_steps=3000", *[arg for s in sets for arg in ("--set", s)]],
        stdout=log, stderr=subprocess.STDOUT,
    )
    fill_after_steps(cli, lambda: run_dir / "events.jsonl", mount)
    with open(mount / "filler", "r+b") as filler:  # leave this many bytes free
        filler.truncate(max(0, os.fstat(filler.fileno()).st_size - leave))
    (out / "cli.rc").write_text(str(cli.wait(timeout=240)))
shutil.copytree(run_dir, out / "run")
"""
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("leave", "sets", "adapter_in"),
    [
        # No room at all: the adapter goes to the rescue folder (the reserve is for the last words).
        pytest.param(0, ["monitor.memory_sample_hz=50"], "rescue", id="events-hit-it"),
        # Room for many small events, none for a checkpoint (adapter + optimizer state, ~330 kB):
        # the torn checkpoint is removed, and then the run folder has room for the adapter.
        pytest.param(
            48 << 10, ["monitor.memory_sample_hz=0.2", "training.save_steps=5"], "run", id="a-checkpoint-hits-it"
        ),
    ],
)
def test_a_full_disk_stops_the_run_keeps_whole_lines_and_saves_the_adapter_where_there_is_room(
    tmp_path: Path, leave: int, sets: list[str], adapter_in: str
) -> None:
    from tests.conftest import read_events

    mount, out, rescue = tmp_path / "disk", tmp_path / "out", tmp_path / "rescue"
    mount.mkdir()
    out.mkdir()
    (tmp_path / "script.py").write_text(FULL_DISK_SCRIPT)
    shell = 'mount -t tmpfs -o size=4m loratop-test "$1" && shift && exec "$@"'
    env = dict(os.environ, LORATOP_RESCUE_DIR=str(rescue))
    subprocess.run(
        [*private_mount_namespace(), "sh", "-c", shell, "sh", str(mount), sys.executable,
         str(tmp_path / "script.py"), str(mount), str(out), str(DEMO), str(leave), *sets],
        env=env, check=True, timeout=540,
    )  # fmt: skip
    console = (out / "cli.out").read_text()
    assert (out / "cli.rc").read_text() == "1", console
    assert "Traceback" not in console
    assert any(line.startswith("run disk_full") for line in console.splitlines()), console
    events = read_events(out / "run")  # asserts no torn or garbled line
    assert [e["seq"] for e in events] == list(range(len(events))), "every event kept, in order"
    last = events[-1]
    assert last["type"] == "run_finished" and last["status"] == "disk_full", console
    assert last["error"]["message"].startswith(f"disk full at step {last['step']}")
    assert f"disk full at step {last['step']}" in console
    status = json.loads((out / "run" / "status.json").read_text())
    assert status["state"] == "finished" and status["status"] == "disk_full" and status["exit_code"] == 1
    assert status["last_step"] == last["step"]
    if adapter_in == "rescue":
        assert last["rescued_to"].startswith(str(rescue))
        assert last["adapter"] == str(Path(last["rescued_to"]) / "adapter")
        assert f"adapter saved to {last['adapter']}" in console
        assert (Path(last["adapter"]) / "adapter_model.safetensors").is_file()
        assert read_events(Path(last["rescued_to"])) == events, "the rescue folder holds the whole run too"
    else:
        assert "rescued_to" not in last and not rescue.exists()
        assert last["adapter"] == str(mount / "runs" / "full" / "adapter")
        assert (out / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "run" / ".loratop-reserve").exists()
    for checkpoint in (out / "run").glob("checkpoint-*"):
        assert (checkpoint / "trainer_state.json").is_file(), f"{checkpoint.name} is torn and was left behind"
    if "training.save_steps=5" in sets:
        assert any(
            "the disk filled while it was written" in e.get("message", "") for e in events if e["type"] == "log"
        ), console


CALLBACK_FULL_DISK_SCRIPT = (
    FILL_AFTER_STEPS
    + r"""
mount, out, script, steps = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
with open(out / "script.out", "w") as log:
    run = subprocess.Popen(
        [sys.executable, script, "--runs-dir", str(mount / "runs"), "--max-steps", steps],
        cwd=out, stdout=log, stderr=subprocess.STDOUT,
    )
    fill_after_steps(run, lambda: next((mount / "runs").glob("*/events.jsonl"), None), mount)
    (out / "script.rc").write_text(str(run.wait(timeout=400)))
for folder in (mount / "runs").iterdir():
    shutil.copytree(folder, out / "run")
"""
)


@pytest.mark.slow
def test_a_script_run_on_a_disk_that_fills_trains_on_says_so_and_ends_recorded_not_lost(tmp_path: Path) -> None:
    """issue 24, item 4: LoratopCallback never stops someone's training for its own disk; it says
    so once on the script's console, keeps the events in memory, and at the end the reserve it
    set aside at the start gives room for them, run_finished and status.json: the run reads as
    completed, not lost, and no temp file is left behind."""
    from tests.conftest import read_events
    from tests.test_callback import SCRIPT

    mount, out = tmp_path / "disk", tmp_path / "out"
    mount.mkdir()
    out.mkdir()
    (tmp_path / "script.py").write_text(CALLBACK_FULL_DISK_SCRIPT)
    shell = 'mount -t tmpfs -o size=4m loratop-test "$1" && shift && exec "$@"'
    subprocess.run(
        [*private_mount_namespace(), "sh", "-c", shell, "sh", str(mount), sys.executable,
         str(tmp_path / "script.py"), str(mount), str(out), str(SCRIPT), "40"],
        check=True, timeout=540,
    )  # fmt: skip
    console = (out / "script.out").read_text()
    assert (out / "script.rc").read_text() == "0", console
    assert "the disk is full" in console and "training goes on" in console, console
    assert console.count("loratop: ") == 1, "said once"
    events = read_events(out / "run")
    assert [e["seq"] for e in events] == list(range(len(events))), "every event kept, in order"
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(1, 41))
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "completed"
    status = json.loads((out / "run" / "status.json").read_text())
    assert status["state"] == "finished" and status["status"] == "completed" and status["last_step"] == 40
    assert not list((out / "run").glob(".*.tmp")) and not (out / "run" / ".loratop-reserve").exists()


# -- the run folder removed under a live run (item 7) ---------------------------------------------


@pytest.mark.slow
def test_a_removed_run_folder_is_said_and_the_trainer_stops_and_rescues_its_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from textual.widgets import Static

    from loratop.core.events import read_events
    from loratop.preflight.config import load_config
    from loratop.preflight.launcher import launch

    rescue = tmp_path / "rescue"
    monkeypatch.setenv("LORATOP_RESCUE_DIR", str(rescue))  # the trainer inherits it
    config = load_config(DEMO, {"output_dir": str(tmp_path / "runs" / "gone"), "training.max_steps": 3000})
    run = launch(config, DEMO)
    os.close(run.events_fd)  # nobody on the pipe: this dashboard attaches to the folder, as from another terminal
    app = LoratopApp(run.run_dir)
    notes: list[str] = []

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            await until(pilot, lambda: screen.state.last_step >= 3, 180, "the first steps")
            # Held still while attach looks (our own child), or it may notice and finish first.
            REAL_KILL(run.process.pid, signal.SIGSTOP)
            shutil.rmtree(run.run_dir)
            await until(pilot, lambda: screen.state.folder_note is not None, 10, "attach to notice")
            notes.append(str(screen.state.folder_note))
            REAL_KILL(run.process.pid, signal.SIGCONT)
            await until(pilot, lambda: "has exited" in (screen.state.folder_note or ""), 30, "the trainer to stop")
            outcome = lambda: str(app.screen.query_one("#outcome", Static).render())  # noqa: E731 - redrawn each second
            await until(pilot, lambda: "has exited" in outcome(), 10, "the outcome to say so")
            notes.append(outcome())

    asyncio.run(drive())
    assert run.process.wait(timeout=30) == 0  # a stop, not a crash
    assert notes[0].startswith(f"run folder removed; trainer pid {run.process.pid} still running")
    assert f"look under {rescue}/" in notes[1]
    (rescued,) = rescue.iterdir()
    events, skipped = read_events(str(rescued / "events.jsonl"))
    assert skipped == 0 and [e["seq"] for e in events] == list(range(len(events)))
    last = events[-1]
    assert last["type"] == "run_finished" and last["status"] == "stopped" and last["stopped_by"] == "run folder removed"
    assert last["adapter"] == str(rescued / "adapter") and (rescued / "adapter" / "adapter_model.safetensors").is_file()
    assert any("adapter saved to" in e.get("message", "") for e in events if e["type"] == "log")
    assert json.loads((rescued / "status.json").read_text())["rescued_from"] == str(run.run_dir)
    assert not run.run_dir.exists(), "the removed folder is not made again"


def test_a_full_disk_at_launch_is_one_line_and_leaves_nothing_behind(tmp_path: Path) -> None:
    mount = tmp_path / "disk"
    mount.mkdir()
    shell = (
        'mount -t tmpfs -o size=1m loratop-test "$1" && (cat /dev/zero > "$1/filler" 2>/dev/null; true) && '
        '"$2" -m loratop.cli.main run "$3" --no-tui --set output_dir="$1/runs/x"; echo "rc=$?"; '
        'find "$1" -mindepth 1 ! -name filler'
    )
    result = subprocess.run(
        [*private_mount_namespace(), "sh", "-c", shell, "sh", str(mount), sys.executable, str(DEMO)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert "rc=2" in lines, result.stdout + result.stderr
    left = lines[lines.index("rc=2") + 1 :]
    assert not [p for p in left if p.endswith(("events.jsonl", "config.yaml", "status.json", "trainer.log"))], left
    problems = [line for line in result.stderr.splitlines() if not line.startswith(("warning:", "loratop: 1 problem"))]
    assert len(problems) == 1 and "No space left on device" in problems[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_trainer_a_test_leaves_running_is_ended_when_the_test_ends() -> None:
    """issue 26, item 1: a timed-out test left its trainer training for 18 minutes. conftest ends
    what a test started (here: a stand-in whose command line names the trainer), and nothing else."""
    from tests.conftest import descendant_pids, end_trainers_started_since

    before = descendant_pids()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "not-a-trainer"])
    leaked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "loratop.trainer"])
    try:
        assert end_trainers_started_since(before) == [leaked.pid]
        leaked.wait(timeout=20)  # ended (psutil reaped it already: its code reads 0 here)
        assert other.poll() is None, "only trainers are ended"
    finally:
        for process in (other, leaked):
            if process.poll() is None:
                REAL_KILL(process.pid, signal.SIGKILL)
            process.wait()


# -- a finished run's caches on a disk that will not take them --------------------------------------


def _done_run(runs: Path) -> Path:
    """A finished run as an older loratop left it: events and status, no caches."""
    run = runs / "done-run"
    run.mkdir(parents=True)
    shutil.copy(RECORDED, run / "events.jsonl")
    (run / "status.json").write_text(json.dumps(dead_status(state="finished", started_at=100.0)))
    return run


def _in_small_disk(mount: Path, setup: str, command: list[str]) -> subprocess.CompletedProcess[str]:
    """``command`` in a mount namespace of its own, ``mount`` a 1 MiB tmpfs holding a copy of
    ``mount``'s files, then ``setup`` (shell, ``$1`` the mount) done to it; afterwards what is on it."""
    shell = (
        'cp -a "$1" "$1.orig" && mount -t tmpfs -o size=1m loratop-test "$1" && cp -a "$1.orig/." "$1" && '
        f'{setup} && shift && "$@"; echo "rc=$?"; cd "$0" && find . -type f | sort | xargs sha256sum'
    )
    return subprocess.run(
        [*private_mount_namespace(), "sh", "-c", shell, str(mount), str(mount), *command],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _hashes(root: Path) -> list[str]:
    """What ``_in_small_disk`` prints of its files, for the same files here."""
    result = subprocess.run(
        "find . -type f | sort | xargs sha256sum", shell=True, cwd=root, capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def test_ls_index_on_a_read_only_copy_lists_the_run_and_names_what_it_could_not_cache(tmp_path: Path) -> None:
    """A run folder on a read-only mount (a colleague's runs, a snapshot): ``ls --index`` lists
    the finished run all the same, writes nothing, and says (piped too: it was asked to cache)
    which runs it could not cache and why every look will read them whole."""
    runs = tmp_path / "runs"
    _done_run(runs)
    before = _hashes(runs)
    result = _in_small_disk(
        runs,
        'mount -o remount,ro "$1"',
        [sys.executable, "-m", "loratop.cli.main", "ls", "--index", "--runs-dir", str(runs)],
    )
    out = result.stdout.splitlines()
    assert "rc=0" in out, result.stdout + result.stderr
    listed = out[: out.index("rc=0")]
    (row,) = [line for line in listed if line.startswith("done-run")]
    assert " completed " in row and "damaged" not in row, row
    assert "1 finished run(s) could not be cached (a read-only folder or a full disk?)" in result.stderr
    assert result.stderr.rstrip().endswith(": done-run"), result.stderr
    assert "Traceback" not in result.stderr
    assert out[out.index("rc=0") + 1 :] == before, "nothing written on the read-only copy"


def test_a_run_end_that_finds_the_disk_full_caches_nothing_and_the_run_still_lists(tmp_path: Path) -> None:
    """The run's end settles its caches on a full disk: no cache, no half-written file left, the
    events as they were; ``ls`` then folds the run in memory and shows it finished."""
    runs = tmp_path / "runs"
    run = _done_run(runs)
    before = _hashes(runs)
    code = (
        "import sys; from pathlib import Path; from loratop.core.run_summary import settle_finished_run; "
        "from loratop.core.runs import list_runs; run = Path(sys.argv[1]); "
        "print('settled', settle_finished_run(run)); "
        "print('listed', [(r.name, r.status, r.step) for r in list_runs(run.parent)])"
    )
    fill = '(cat /dev/zero > "$1/.filler" 2>/dev/null; true)'
    result = _in_small_disk(runs, fill, [sys.executable, "-c", code, str(run)])
    out = result.stdout.splitlines()
    assert "rc=0" in out, result.stdout + result.stderr
    assert "settled False" in out and "listed [('done-run', 'completed', 60)]" in out, result.stdout + result.stderr
    left = [line for line in out[out.index("rc=0") + 1 :] if not line.endswith("./.filler")]
    assert left == before, "no cache, no temporary file; the events and status as they were"


# -- the data file gone between the launch checks and the trainer's read -------------------------


def test_a_data_file_gone_after_the_checks_fails_the_run_before_the_model_loads(tmp_path: Path) -> None:
    """The trainer reads the rows before the weights: a data file removed after the launch checks
    ends the run in seconds, said in one line naming the key, with no model load spent on it."""
    from loratop.core import events as ev
    from loratop.preflight.config import load_config, parse_overrides
    from loratop.preflight.launcher import launch
    from tests.conftest import of_type, read_events

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(f'{{"prompt": "{i} plus {i}?", "completion": " {2 * i}."}}\n' for i in range(32)))
    overrides = [f"output_dir={tmp_path / 'run'}", f"data.path={data}", "data.format=auto", "training.max_steps=2"]
    config = load_config(DEMO, parse_overrides(overrides))
    run = launch(config, DEMO)
    data.unlink()  # the trainer is still importing torch: it has read nothing yet
    try:
        assert run.process.wait(timeout=120) != 0
    finally:
        os.close(run.events_fd)
    events = read_events(run.run_dir)
    (finished,) = of_type(events, ev.RUN_FINISHED)
    assert finished["status"] == ev.FAILED, finished
    message = finished["error"]["message"]
    assert message.startswith(f"data.path = {str(data)!r}") and "Traceback" not in message, message
    said = [e["message"] for e in of_type(events, ev.LOG)]
    assert f"loading data from {data}" in said
    assert not [m for m in said if m.startswith(("loading tiny", "preparing the embedded tiny model"))], said
