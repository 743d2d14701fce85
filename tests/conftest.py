"""Shared fixtures: one tiny-model cache per test session, helpers to run the real trainer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from loratop.core.run_state import RunState

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "sample_configs" / "tiny-cpu-demo.yaml"
RECORDED_RUNS = REPO / "tests" / "data" / "runs"
"""Three short real runs of the tiny model: tiny-r8, tiny-r16 (its child: r 8 → 16, α 16 → 32,
lr 2e-3 → 1e-3) and tiny-lr-high (lr 3e-2, two spikes). Read them; copy before writing."""


@pytest.fixture(scope="session", autouse=True)
def _tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every run in the session shares one tiny-model cache (built once, seconds)."""
    previous = os.environ.get("LORATOP_CACHE")
    if "LORATOP_TEST_CACHE" in os.environ:
        os.environ["LORATOP_CACHE"] = os.environ["LORATOP_TEST_CACHE"]
    else:
        os.environ["LORATOP_CACHE"] = str(tmp_path_factory.mktemp("loratop-cache"))
    yield
    if previous is None:
        os.environ.pop("LORATOP_CACHE", None)
    else:
        os.environ["LORATOP_CACHE"] = previous


TRAINER_MARKS = ("loratop.trainer", "loratop.cli.main", "torch.distributed.run", "train_with_callback.py")
"""What a training process this suite starts has on its command line."""


@pytest.fixture(autouse=True)
def _end_the_trainers_a_test_started() -> Iterator[None]:
    """Every training process a test started and left running is ended when the test ends,
    pass or fail: a leaked CPU trainer slows every later test on a 2-core box."""
    before = descendant_pids()
    yield
    end_trainers_started_since(before)


def descendant_pids() -> set[int]:
    import psutil

    return {child.pid for child in psutil.Process().children(recursive=True)}


def end_trainers_started_since(before: set[int]) -> list[int]:
    """End this process's descendants that are not in ``before`` and run a trainer (or the
    command that launched one). Only our own descendants are touched, and psutil checks each
    pid's start time before it signals, so a reused pid is never hit; trainers first (they run
    in sessions of their own and would outlive the command that launched them). Returns the
    pids it ended."""
    import psutil

    started = []
    for child in psutil.Process().children(recursive=True):
        if child.pid not in before and any(mark in " ".join(_cmdline(child)) for mark in TRAINER_MARKS):
            started.append(child)
    started.sort(key=lambda child: "loratop.trainer" not in " ".join(_cmdline(child)))
    for child in started:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(started, timeout=15)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=5)
    return [child.pid for child in started]


def _cmdline(process: Any) -> list[str]:
    try:
        return list(process.cmdline())
    except Exception:  # gone already (psutil.Error), or not ours to read
        return []


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """The recorded runs, copied into a runs folder of their own (tests never write into tests/data)."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(RECORDED_RUNS, root, ignore=shutil.ignore_patterns(".loratop-index*"))  # a cache a read left
    return root


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """All events of a run, asserting the file holds nothing but valid events."""
    from loratop.core.events import read_events as read

    events, skipped = read(str(run_dir / "events.jsonl"))
    assert skipped == 0, f"{skipped} invalid lines in events.jsonl"
    return events


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def loratop(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the real ``loratop`` CLI in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "loratop.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=kwargs.pop("cwd", REPO),
        timeout=kwargs.pop("timeout", 600),
        **kwargs,
    )


def wait_for_exit(pid: int, timeout: float = 300) -> None:
    """Wait for a process that is not our child (the trainer runs in its own session)."""
    from loratop.core.run_dir import pid_alive

    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid} still running after {timeout} s")
        time.sleep(0.2)


def live_status(pid: int | None = None, **fields: Any) -> dict[str, Any]:
    """A ``status.json`` that proves ``pid`` (this test process by default) is a live trainer:
    the pid with its host, boot and start time, as the trainer writes them."""
    from loratop.core.run_dir import process_identity

    pid = os.getpid() if pid is None else pid
    return {"pid": pid, **process_identity(pid), **fields}


def dead_status(**fields: Any) -> dict[str, Any]:
    """A ``status.json`` as a trainer wrote it, whose process has since ended (and was reaped):
    proof that the trainer is gone."""
    process = subprocess.Popen(["sleep", "60"])
    status = live_status(process.pid, **fields)
    process.kill()
    process.wait()
    return status


def status_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "status.json").read_text())


async def until(pilot: Any, predicate: Any, timeout: float, what: str) -> None:
    """In a Pilot test: wait for ``predicate()``, failing with ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.2)


async def replay_drawn(pilot: Any, screen: Any, timeout: float = 30) -> None:
    """In a Pilot test of a monitor: wait until the replay has come (the run's end folded) and
    the screen has drawn that very state (a redraw tick, waited for, not assumed: a fixed
    pause missed it on a loaded box); then let the layout settle."""
    await until(pilot, lambda: screen.state.finished is not None, timeout, "the replay")
    await state_drawn(pilot, screen, timeout)


async def state_drawn(pilot: Any, screen: Any, timeout: float = 30) -> None:
    """In a Pilot test of a monitor: wait until the screen has drawn the state it holds now (a
    redraw tick, waited for, not assumed); then let the layout settle."""
    await until(pilot, lambda: screen._drawn_version == screen.state.version, timeout, "the state drawn")
    await pilot.pause(0.2)


async def home_read(pilot: Any, timeout: float = 60) -> None:
    """In a Pilot test of the home screen: wait until its first look at the runs (a worker) has
    been drawn, so the table holds what is on disk; then let the screen settle."""
    from loratop.tui.screens.home_screen import HomeScreen

    def read() -> bool:
        screen = pilot.app.screen
        return isinstance(screen, HomeScreen) and screen._read is not None and not screen._looking()

    await until(pilot, read, timeout, "the home screen's first look at the runs")
    await pilot.pause()


def slow_fold(run_dir: Path) -> RunState:
    """A run folded the plain way: every event of events.jsonl applied in order."""
    from loratop.core import events as ev
    from loratop.core.run_state import RunState

    events, skipped = ev.read_events(str(run_dir / "events.jsonl"))
    state = RunState(run_dir)
    state.apply_all(events)
    state.garbage = skipped
    return state


def _same_float(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)  # NaN equals NaN here


def assert_same_fold(fast: RunState, slow: RunState) -> None:
    """Two folds of one run hold the same (NaN equal to NaN)."""
    for name in ("steps", "tokens", "mem_series", "busy"):
        assert list(getattr(fast, name)) == list(getattr(slow, name)), name
    for name in ("loss", "lr", "grad_norm", "step_t"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert len(a) == len(b) and all(_same_float(x, y) for x, y in zip(a, b, strict=True)), name
    for name in ("peak_gpu_used", "peak_rss", "mem_series_kind", "memory", "started", "finished", "checkpoints",
                 "spikes", "spills", "oom_risk", "paged", "first_t", "last_t", "events_seen", "garbage",
                 "busy_n", "busy_sum"):  # fmt: skip
        assert getattr(fast, name) == getattr(slow, name), name
    assert list(fast.messages) == list(slow.messages)


def add_evals(run_dir: Path, points: list[tuple[int, float]]) -> None:
    """Evaluations ``(step, eval loss)`` just before a finished run's last event (run_finished),
    with the seqs that follow, as a trainer with an eval split would have written them."""
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    evals = [
        {"v": 1, "seq": last["seq"] + i, "t": last["t"] - 0.5 + i / 10, "type": "eval", "step": step,
         "eval_loss": loss, "eval_rows": 10, "eval_tokens": 900, "duration_s": 0.1}
        for i, (step, loss) in enumerate(points)
    ]  # fmt: skip
    last["seq"] += len(evals)
    body = [*lines[:-1], *(json.dumps(e) for e in evals), json.dumps(last)]
    (run_dir / "events.jsonl").write_text("\n".join(body) + "\n")


def screen_text(app: Any) -> str:
    """What a running App shows right now, as plain text: one line per terminal row (the
    screen under a modal included, as ``export_screenshot`` draws it)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def copy_run(runs: Path, source: str, name: str, parent: str | None = None) -> Path:
    """A recorded run copied under a new folder name, its recorded ``parent`` replaced by ``parent``."""
    import shutil

    import yaml

    run_dir = runs / name
    shutil.copytree(RECORDED_RUNS / source, run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["output_dir"], config["parent"] = str(run_dir), parent
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    status = json.loads((run_dir / "status.json").read_text())
    status["parent"] = parent
    (run_dir / "status.json").write_text(json.dumps(status))
    return run_dir


def nvidia_gpu_present() -> bool:
    """Whether NVML sees an NVIDIA GPU here (GPU-only tests skip cleanly without one)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return bool(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no pynvml, no driver, no device
        return False


def private_mount_namespace() -> list[str]:
    """``unshare`` arguments for a mount namespace of our own, where a test may mount a small disk."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to give the test a small disk of its own")
    for args in (["unshare", "--mount", "--fork"], ["unshare", "--user", "--map-root-user", "--mount", "--fork"]):
        if subprocess.run([*args, "true"], capture_output=True).returncode == 0:
            return args
    pytest.skip("no mount namespace here (neither root nor unprivileged user namespaces) for a small disk")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for torchrun's rendezvous, a test server)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
