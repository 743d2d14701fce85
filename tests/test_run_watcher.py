"""The App's run watcher (issue 27, item 3): it, not the monitor screen, reads a run's events and its
trainer's fate and posts them; it stops when the monitor goes or the App exits.

A watcher here reads a real run folder (a recorded run of the tiny model, its last event taken
off so it still trains), whose ``status.json`` names a real process that is then killed.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.message import Message

from loratop.core import events as ev
from loratop.tui.app import LoratopApp
from loratop.tui.models.messages import (
    EventsArrived,
    Replayed,
    TrainerGone,
)
from loratop.tui.models.run_watcher import RunWatcher
from loratop.tui.screens.monitor_screen import MonitorScreen
from tests.conftest import REPO, live_status, status_of, until


def _training_copy(runs: Path, status: dict[str, Any]) -> tuple[Path, int]:
    """``tiny-r8`` as if it still trained: its ``run_finished`` taken off, ``status`` its status.

    Returns:
        The run folder and the ``seq`` its next event carries.
    """
    run_dir = runs / "tiny-r8"
    lines = (run_dir / "events.jsonl").read_bytes().splitlines(keepends=True)
    assert json.loads(lines[-1])["type"] == ev.RUN_FINISHED
    (run_dir / "events.jsonl").write_bytes(b"".join(lines[:-1]))
    (run_dir / "status.json").write_text(json.dumps({"state": "running", **status}))
    return run_dir, len(lines) - 1


def _append_step(run_dir: Path, seq: int, step: int) -> None:
    with (run_dir / "events.jsonl").open("ab") as fh:
        fh.write(ev.encode(seq, ev.STEP, {"step": step, "loss": 1.5, "lr": 1e-4, "grad_norm": 0.3, "tokens": 100}))


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_the_monitor_screen_reads_no_events_and_records_nothing() -> None:
    """The screen keeps only folding messages and drawing: no pipe, follower, reaper or liveness
    loop of its own, and it neither reads ``events.jsonl`` nor writes ``status.json``."""
    for name in ("read_events", "_read_pipe", "_follow_file", "_reap", "_follow_removed_folder"):
        assert not hasattr(MonitorScreen, name), name
    tree = ast.parse((REPO / "tui" / "screens" / "monitor_screen.py").read_text())
    imported = {
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    for name in (
        "loratop.core.event_stream.PipeStream",
        "loratop.core.event_stream.FileFollower",
        "loratop.core.run_dir.record_lost",
        "loratop.core.run_summary.fold_run",
        "loratop.core.runs.trainer_verdict",
    ):
        assert name not in imported, name


def test_a_watcher_replays_follows_and_records_a_trainer_that_died(runs: Path) -> None:
    """Attach's watcher: the run at once, then what it appends, then (its trainer killed) the
    loss, said to the screen and recorded in ``status.json`` with the last step read."""
    trainer = subprocess.Popen(["sleep", "60"])  # status.json names it as the run's trainer
    run_dir, seq = _training_copy(runs, live_status(trainer.pid))
    posted: list[Message] = []
    watcher = RunWatcher(run_dir, posted.append)
    watcher.start()
    try:
        _wait(lambda: any(isinstance(m, Replayed) for m in posted), 20, "the replay")
        (replayed,) = [m for m in posted if isinstance(m, Replayed)]
        assert replayed.state.last_step == 60 and replayed.state.finished is None
        _append_step(run_dir, seq, 61)
        _wait(lambda: any(isinstance(m, EventsArrived) for m in posted), 10, "the appended step")
        (arrived,) = [m for m in posted if isinstance(m, EventsArrived)]
        assert [(e["seq"], e["step"]) for e in arrived.events] == [(seq, 61)]
        assert not any(isinstance(m, TrainerGone) for m in posted)  # it still runs
        trainer.kill()
        trainer.wait()
        _wait(lambda: any(isinstance(m, TrainerGone) for m in posted), 10, "the trainer's loss")
        watcher.thread.join(5)
        assert not watcher.thread.is_alive(), "a lost run's watcher is done"
    finally:
        watcher.stop(5)
        trainer.kill()
        trainer.wait()
    status = status_of(run_dir)
    assert status["state"] == "lost" and status["last_step"] == 61
    assert status["ended_at"] > 0


def test_attaching_to_a_finished_run_without_caches_reads_its_events_once_and_caches_them(
    runs: Path, monkeypatch: Any
) -> None:
    """A run from an older loratop (no index, no summary): attach replays it, and the watcher
    that saw it end settles its caches from the index the replay wrote on the way, not from a
    second read of every event (a million-step run read twice on the watcher thread)."""
    import shutil

    from loratop.core import run_index
    from loratop.core.run_index import INDEX, load_index
    from loratop.core.run_summary import SUMMARY, cached_facts

    run_dir = runs / "tiny-r8"
    shutil.rmtree(run_dir / INDEX, ignore_errors=True)
    assert load_index(run_dir) is None and cached_facts(run_dir) is None
    whole_reads: list[int] = []
    real_fold_file = run_index.fold_file

    def counted(run_dir: Path, on_event: Any, *, cache_if: Any = None, start: int = 0) -> tuple[int, int]:
        if start == 0:
            whole_reads.append(start)
        return real_fold_file(run_dir, on_event, cache_if=cache_if, start=start)

    monkeypatch.setattr("loratop.core.run_summary.fold_file", counted)
    posted: list[Message] = []
    watcher = RunWatcher(run_dir, posted.append)
    watcher.start()
    try:
        _wait(lambda: not watcher.thread.is_alive(), 20, "the watcher to settle the finished run")
    finally:
        watcher.stop(5)
    (replayed,) = [m for m in posted if isinstance(m, Replayed)]
    assert replayed.state.finished is not None and replayed.state.last_step == 60
    assert whole_reads == [0], "events.jsonl read whole once"
    assert load_index(run_dir) is not None and (run_dir / INDEX / SUMMARY).is_file()
    assert cached_facts(run_dir) is not None


def test_a_launched_runs_watcher_reaps_its_trainer_and_records_how_it_died(runs: Path) -> None:
    """The pipe path: what the pipe brings is posted; the trainer killed without a report is
    reaped, its exit code posted and recorded (``killed by SIGKILL``)."""
    trainer = subprocess.Popen(["sleep", "60"])
    run_dir, _ = _training_copy(runs, live_status(trainer.pid))
    lines = (run_dir / "events.jsonl").read_bytes().splitlines(keepends=True)
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"".join(lines[:5]))
    posted: list[Message] = []
    watcher = RunWatcher(run_dir, posted.append, read_fd, trainer)
    watcher.start()
    try:
        _wait(lambda: any(isinstance(m, EventsArrived) for m in posted), 10, "the pipe's events")
        trainer.send_signal(signal.SIGKILL)
        _wait(lambda: any(isinstance(m, TrainerGone) for m in posted), 10, "the trainer's loss")
    finally:
        os.close(write_fd)
        watcher.stop(5)
        trainer.kill()
        trainer.wait()
    kinds = [type(m).__name__ for m in posted]
    assert kinds[0] == "EventsArrived" and kinds[-1] == "TrainerGone", kinds
    seqs = [e["seq"] for m in posted if isinstance(m, EventsArrived) for e in m.events]
    assert seqs == list(range(len(lines))), "the pipe's events, then the file's rest"
    gone = next(m for m in posted if isinstance(m, TrainerGone))
    assert gone.exit_code == -signal.SIGKILL
    status = status_of(run_dir)
    assert status["state"] == "lost" and status["exit_code"] == -signal.SIGKILL
    assert "SIGKILL" in status["lost_cause"]


def test_a_launched_runs_pipe_is_the_apps_until_its_monitor_mounts(runs: Path) -> None:
    """The monitor holds no pipe or process: the App keeps them for the watcher its monitor starts
    on mount, and closes a pipe whose monitor never mounted when it exits (no fd left open)."""
    trainer = subprocess.Popen(["sleep", "60"])
    run_dir, _ = _training_copy(runs, live_status(trainer.pid))
    shown_fd, shown_write = os.pipe()
    unshown_fd, unshown_write = os.pipe()
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            shown = app.open_monitor(run_dir, shown_fd, trainer)
            app.open_monitor(run_dir, unshown_fd)  # made, never pushed
            held = vars(shown)
            assert "_pipe_fd" not in held and not any(v is trainer for v in held.values()), "the screen holds neither"
            await app.push_screen(shown)
            await until(pilot, lambda: shown in app.watchers, 10, "the monitor's watcher")
            watcher = app.watchers[shown]
            assert (watcher._pipe_fd, watcher._process) == (shown_fd, trainer)
            app.exit()

    try:
        asyncio.run(drive())
        with pytest.raises(OSError):  # closed by the App on its way out
            os.fstat(unshown_fd)
        assert trainer.poll() is None, "the run trains on"
    finally:
        os.close(shown_write)
        os.close(unshown_write)
        trainer.kill()
        trainer.wait()


def test_going_back_from_a_monitor_stops_its_watcher_and_the_run_goes_on(runs: Path) -> None:
    """The watcher belongs to the App and posts to the monitor; ``esc`` (the monitor popped)
    stops its thread, and the trainer is not signalled."""
    trainer = subprocess.Popen(["sleep", "60"])
    run_dir, _ = _training_copy(runs, live_status(trainer.pid))
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            home = app.screen
            monitor = MonitorScreen(run_dir)
            app.push_screen(monitor)
            await until(pilot, lambda: monitor.state.last_step == 60, 20, "the monitor to show the run")
            watcher = app.watchers[monitor]
            assert watcher.thread.is_alive() and watcher.thread is not threading.current_thread()
            assert not any(isinstance(w, threading.Thread) for w in vars(monitor).values())
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is home and monitor not in app.watchers
            await until(pilot, lambda: not watcher.thread.is_alive(), 5, "the watcher to stop")
            app.exit()

    try:
        asyncio.run(drive())
        assert trainer.poll() is None, "the run trains on"
    finally:
        trainer.kill()
        trainer.wait()


def test_the_app_exiting_stops_every_watcher(runs: Path) -> None:
    """Detach (the App exits on a live run): the watcher's thread ends; the run trains on."""
    trainer = subprocess.Popen(["sleep", "60"])
    run_dir, _ = _training_copy(runs, live_status(trainer.pid))
    app = LoratopApp(run_dir)
    threads: list[threading.Thread] = []

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: bool(app.watchers), 5, "the watcher")
            threads.extend(w.thread for w in app.watchers.values())
            await until(pilot, lambda: app.screen.state.last_step == 60, 20, "the run shown")  # type: ignore[attr-defined]
            await pilot.press("d")

    try:
        asyncio.run(drive())
        assert app.return_value == "detached"
        for thread in threads:
            thread.join(5)
            assert not thread.is_alive()
        assert not app.watchers
        assert trainer.poll() is None, "detach never signals the run"
    finally:
        trainer.kill()
        trainer.wait()
