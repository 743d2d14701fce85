"""A dropped SSH link (SIGHUP to the dashboard) never kills the run; attach shows it all."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loratop.core import events as ev
from loratop.tui.app import LoratopApp
from loratop.tui.screens.monitor_screen import MonitorScreen
from tests.conftest import DEMO_CONFIG, REPO, of_type, read_events, status_of, until, wait_for_exit

pytestmark = pytest.mark.slow


def _drain(fd: int) -> None:
    while select.select([fd], [], [], 0)[0]:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


def _end_the_trainer(run_dir: Path) -> None:
    """End the run's trainer if it still runs (the test failed waiting): by the pid its
    status.json proves to be that very process, never by name. It is in a session of its own,
    orphaned when the dashboard went, so the suite's fixture for our descendants cannot see it."""
    from loratop.core.run_dir import proven_trainer_pid, read_status

    pid = proven_trainer_pid(read_status(run_dir) or {})
    if pid is not None:
        os.kill(pid, signal.SIGTERM)  # torchrun's agent passes it on to the ranks
        wait_for_exit(pid, timeout=60)


RANKS_2 = ["distributed.nproc_per_node=2", "training.per_device_train_batch_size=1", "training.max_seq_length=64",
           "data.max_rows=64"]  # fmt: skip


@pytest.mark.parametrize("extra", [[], RANKS_2], ids=["one-process", "two-ranks"])
def test_sighup_to_the_dashboard_leaves_the_trainer_running(tmp_path: Path, extra: list[str]) -> None:
    """One trainer, or torchrun's agent and its two ranks: all in sessions of their own."""
    # An ignored SIGHUP is inherited across exec: the dashboard would then survive the
    # hang-up for the wrong reason, and this test would prove nothing.
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL, "an earlier test left SIGHUP ignored"
    run_dir = tmp_path / "run"
    master, slave = pty.openpty()
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "loratop.cli.main", "run", str(DEMO_CONFIG),
         "--set", f"output_dir={run_dir}", "--set", "training.max_steps=150",
         *[a for s in extra for a in ("--set", s)]],
        cwd=REPO, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        env=dict(os.environ, TERM="xterm-256color", COLUMNS="100", LINES="30"),
    )  # fmt: skip
    os.close(slave)
    try:
        deadline = time.monotonic() + 180
        while not (run_dir / "events.jsonl").exists() or '"type":"step"' not in (run_dir / "events.jsonl").read_text():
            assert dashboard.poll() is None, "the dashboard died on its own"
            assert time.monotonic() < deadline, "no step within 180 s"
            _drain(master)  # a terminal that is read, like a real one
            time.sleep(0.2)
        dashboard.send_signal(signal.SIGHUP)  # what sshd sends when the link drops
        dashboard.wait(timeout=30)
    finally:
        os.close(master)
        if dashboard.poll() is None:
            dashboard.kill()
    try:
        wait_for_exit(status_of(run_dir)["pid"])
    finally:
        _end_the_trainer(run_dir)  # outlived the dashboard on purpose: no longer our descendant
    events = read_events(run_dir)
    assert of_type(events, ev.RUN_FINISHED)[0]["status"] == ev.COMPLETED
    assert [s["step"] for s in of_type(events, ev.STEP)] == list(range(1, 151))

    # `loratop attach RUN` afterwards shows every step.
    app = LoratopApp(run_dir)

    async def attach() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            await until(pilot, lambda: screen.state.finished is not None, 60, "the replay")
            assert list(screen.state.steps) == list(range(1, 151))
            assert screen.state.status == ev.COMPLETED

    asyncio.run(attach())
