"""LoratopCallback: a training script loratop did not launch, in the same dashboard (issue 17).

The slow tests run a real script (tests/data/hf_scripts/train_with_callback.py: the tiny
Llama with a LoRA adapter under a plain ``Trainer`` and under TRL's ``SFTTrainer``) as its
own process, then look at its run folder with loratop's own commands.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from loratop.core import events as ev
from loratop.core.run_dir import proven_trainer_pid, read_status, request_control
from loratop.core.run_summary import fold_run
from tests.conftest import free_port, loratop, of_type, read_events

SCRIPT = Path(__file__).parent / "data" / "hf_scripts" / "train_with_callback.py"


def _script(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--runs-dir", "runs", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run_folder(tmp_path: Path) -> Path:
    folders = sorted((tmp_path / "runs").glob("tiny-script-*"))
    assert len(folders) == 1, folders
    return folders[0]


@pytest.fixture(scope="module", params=["trainer", "sft"])
def script_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One finished script run per trainer kind: (its working folder, its output)."""
    work = tmp_path_factory.mktemp(f"script-{request.param}")
    process = _script(work, "--trainer", request.param, "--max-steps", "12")
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return work, output


@pytest.mark.slow
def test_a_script_run_leaves_a_run_folder_like_a_launched_run(script_run: tuple[Path, str]) -> None:
    work, _ = script_run
    run_dir = _run_folder(work)
    events = read_events(run_dir)
    assert [e["seq"] for e in events] == list(range(len(events)))
    started = of_type(events, ev.RUN_STARTED)[0]
    assert started["config"]["lora"]["r"] == 8 and started["config"]["training"]["learning_rate"] == 1e-3
    assert "data" not in started["config"], "what the callback cannot know is left out, not defaulted"
    assert started["params"]["trainable"] > 0 and started["params"]["base_frozen"] is True
    assert [s["step"] for s in of_type(events, ev.STEP)] == list(range(1, 13))
    assert len(of_type(events, ev.EVAL)) >= 2
    assert of_type(events, ev.MEMORY), "memory sampled on its own thread"
    assert of_type(events, ev.PAGED_STATE), "the optimizer's state accounted"
    finished = of_type(events, ev.RUN_FINISHED)
    assert len(finished) == 1 and finished[0]["status"] == ev.COMPLETED and finished[0]["step"] == 12
    status = read_status(run_dir) or {}
    assert status["state"] == "finished" and status["status"] == ev.COMPLETED
    assert status["control"] == "requests" and status["source"] == "LoratopCallback"
    state, _ = fold_run(run_dir)
    assert state.started is not None and state.last_step == 12 and len(state.evals) >= 2


@pytest.mark.slow
def test_ls_export_and_attach_show_a_script_run(script_run: tuple[Path, str]) -> None:
    work, _ = script_run
    run_dir = _run_folder(work)
    listed = loratop("ls", "--runs-dir", "runs", cwd=work)
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines() if row.startswith(run_dir.name))
    assert "completed" in line and "12/12" in line and "r8 α16 lr1e-3 b4×1" in line
    exported = loratop("export", "--runs-dir", "runs", run_dir.name[-15:], cwd=work)  # the time stamp
    assert exported.returncode == 0, exported.stderr
    metrics = (work / "loratop-exports" / f"{run_dir.name}-metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 12
    assert (work / "loratop-exports" / f"{run_dir.name}-eval.csv").exists()

    from loratop.tui.app import LoratopApp
    from tests.conftest import replay_drawn, screen_text

    app = LoratopApp(run_dir, runs_root=work / "runs")

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await replay_drawn(pilot, app.screen)
            text = screen_text(app)
            assert run_dir.name in text and "12/12" in text and "COMPLETED" in text.upper()

    asyncio.run(drive())


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_stop_and_checkpoint_from_the_dashboard_reach_a_script_at_a_step_boundary(tmp_path: Path) -> None:
    process = _script(tmp_path, "--max-steps", "5000")
    try:
        _wait_for(lambda: (tmp_path / "runs").exists() and any((tmp_path / "runs").glob("*/events.jsonl")), 120, "it")
        run_dir = _run_folder(tmp_path)
        _wait_for(lambda: len(of_type(read_events(run_dir), ev.STEP)) >= 3, 120, "three steps")
        status = read_status(run_dir) or {}
        assert proven_trainer_pid(status) == process.pid, "status.json proves the script's own pid"
        request_control(run_dir, "checkpoint")
        _wait_for(lambda: of_type(read_events(run_dir), ev.CHECKPOINT), 60, "the requested checkpoint")
        request_control(run_dir, "stop")
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]
    events = read_events(run_dir)
    finished = of_type(events, ev.RUN_FINISHED)[0]
    assert finished["status"] == ev.STOPPED and finished["stopped_by"] == "stop requested"
    assert finished["step"] < 5000
    checkpoint = of_type(events, ev.CHECKPOINT)[0]
    assert Path(checkpoint["path"]).is_dir()


def _torchrun(ranks: int) -> list[str]:
    """torchrun with ``ranks`` processes on this box, its rendezvous on a free port."""
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, "--nproc-per-node", str(ranks), "--master-port", str(free_port())]


@pytest.mark.slow
def test_under_torchrun_rank_0_writes_one_run_with_every_ranks_memory(tmp_path: Path) -> None:
    result = subprocess.run(
        [*_torchrun(2), str(SCRIPT), "--runs-dir", "runs", "--max-steps", "12"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    run_dir = _run_folder(tmp_path)  # one folder: the other rank wrote none
    events = read_events(run_dir)
    ranks = of_type(events, ev.RANKS)
    # The ranks meet as a launched run's do (RankMeeting): the first meeting, at step 1, reports
    # every rank's row; later ones report every RANKS_REPORT_S or when a level or spill count changes.
    assert ranks and ranks[0]["step"] == 1
    assert all(sorted(row["rank"] for row in r["ranks"]) == [0, 1] for r in ranks)
    assert all(row["rss"] and row["pid"] for r in ranks for row in r["ranks"])
    assert [s["step"] for s in of_type(events, ev.STEP)] == list(range(1, 13))
    assert of_type(events, ev.RUN_FINISHED)[0]["status"] == ev.COMPLETED
    listed = loratop("ls", "--runs-dir", "runs", cwd=tmp_path)
    line = next(row for row in listed.stdout.splitlines() if row.startswith(run_dir.name))
    assert "×2" in line and "completed" in line


@pytest.mark.slow
def test_under_torchrun_a_dashboard_checkpoint_and_stop_reach_every_rank_at_one_step(tmp_path: Path) -> None:
    """A script's ranks meet as a launched run's do (RankMeeting): the request rank 0 reads is
    every rank's at the same step, so the run checkpoints, stops and ends cleanly on both."""
    import os

    process = subprocess.Popen(
        [*_torchrun(2), str(SCRIPT), "--runs-dir", "runs", "--max-steps", "5000"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # torchrun and both ranks: one group to end, whatever happens
    )
    try:
        _wait_for(lambda: any((tmp_path / "runs").glob("*/events.jsonl")), 300, "the run folder")
        run_dir = _run_folder(tmp_path)
        _wait_for(lambda: len(of_type(read_events(run_dir), ev.STEP)) >= 3, 300, "three steps")
        request_control(run_dir, "checkpoint")
        _wait_for(lambda: of_type(read_events(run_dir), ev.CHECKPOINT), 300, "the requested checkpoint")
        request_control(run_dir, "stop")
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output[-3000:]
    events = read_events(run_dir)
    finished = of_type(events, ev.RUN_FINISHED)[0]
    assert finished["status"] == ev.STOPPED and finished["stopped_by"] == "stop requested"
    assert finished["step"] < 5000
    (checkpoint,) = of_type(events, ev.CHECKPOINT)
    assert Path(checkpoint["path"]).is_dir()
    assert any("stop requested: stopping after step" in e.get("message", "") for e in of_type(events, ev.LOG))


@pytest.mark.slow
@pytest.mark.faults
def test_a_script_that_dies_mid_run_is_failed_with_its_error_not_lost(tmp_path: Path) -> None:
    process = _script(tmp_path, "--max-steps", "50", "--fail-at-step", "5")
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 1 and "the script's own bug" in output
    run_dir = _run_folder(tmp_path)
    finished = of_type(read_events(run_dir), ev.RUN_FINISHED)
    assert len(finished) == 1 and finished[0]["status"] == ev.FAILED
    assert "RuntimeError: the script's own bug at step 5" in finished[0]["error"]["message"]
    assert (read_status(run_dir) or {})["status"] == ev.FAILED


@pytest.mark.faults
def test_a_run_folder_that_cannot_be_made_never_stops_the_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from loratop.trainer.callback import LoratopCallback

    (tmp_path / "runs").write_text("a file where the runs folder should be")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    state, control = TrainerState(), TrainerControl()
    callback = LoratopCallback(runs_dir=tmp_path / "runs")
    callback.on_train_begin(args, state, control)  # must not raise
    for step in (1, 2):
        state.global_step = step
        callback.on_log(args, state, control, logs={"loss": 1.0})
        callback.on_step_end(args, state, control)
    callback.on_train_end(args, state, control)
    assert callback.run_dir is None and callback.sink is None
    assert "loratop: not watching this run:" in capsys.readouterr().err


# -- without a script ---------------------------------------------------------------


def test_signals_are_opt_in_and_a_handler_the_script_set_is_kept() -> None:
    from loratop.trainer.callback import LoratopCallback

    def scripts_own(signum: int, frame: Any) -> None:
        pass

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        assert LoratopCallback().policy.install_signal_handlers() is False
        assert signal.getsignal(signal.SIGTERM) is saved[signal.SIGTERM], "nothing installed unless asked"
        signal.signal(signal.SIGUSR1, scripts_own)
        callback = LoratopCallback(handle_signals=True)
        assert callback.policy.install_signal_handlers() is False, "without SIGUSR1 the dashboard must use requests"
        assert signal.getsignal(signal.SIGUSR1) is scripts_own
        assert signal.getsignal(signal.SIGTERM) == callback.policy.on_stop
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert LoratopCallback(handle_signals=True).policy.install_signal_handlers() is True
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_settings_are_read_from_the_script_never_defaulted() -> None:
    from loratop.trainer.callback import settings_of

    args = SimpleNamespace(
        learning_rate=2e-4, per_device_train_batch_size=2, optim=SimpleNamespace(value="adamw_torch")
    )
    settings = settings_of(args, model=None)
    assert settings["training"] == {"learning_rate": 2e-4, "per_device_train_batch_size": 2, "optim": "adamw_torch"}
    assert "lora" not in settings and "quantization" not in settings and "model" not in settings


def test_control_requests_count_up_and_a_damaged_file_is_none(tmp_path: Path) -> None:
    from loratop.core.run_dir import read_control

    assert read_control(tmp_path) is None
    request_control(tmp_path, "checkpoint")
    assert request_control(tmp_path, "checkpoint") == {"checkpoint": 2}
    assert request_control(tmp_path, "stop") == {"checkpoint": 2, "stop": 1}
    (tmp_path / "control.json").write_text("{not json")
    assert read_control(tmp_path) is None
    with pytest.raises(ValueError):
        request_control(tmp_path, "reboot")


def test_import_loratop_does_not_load_transformers() -> None:
    code = "import sys, loratop; print('transformers' in sys.modules, callable(loratop.LoratopCallback))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_loratops_own_trainer_runs_on_the_same_callback(tmp_path: Path) -> None:
    """One code path: a launched run's step stream is written by LoratopCallback itself."""
    from loratop.preflight.config import load_config
    from loratop.trainer.callback import LoratopCallback
    from loratop.trainer.event_sink import EventSink
    from loratop.trainer.train import Run, _event_callback
    from tests.conftest import DEMO_CONFIG

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = load_config(DEMO_CONFIG, {"output_dir": str(run_dir)})
    sink = EventSink(run_dir / "events.jsonl")
    callback = _event_callback(Run(config, run_dir, sink))
    sink.close()
    assert isinstance(callback, LoratopCallback)
    for hook in ("on_log", "on_save", "on_step_begin", "on_train_begin"):
        assert getattr(type(callback), hook) is getattr(LoratopCallback, hook), f"{hook} is the shared one"


def test_a_stalled_disk_never_holds_up_a_step(tmp_path: Path) -> None:
    """The callback's events are written by a thread of their own: with the disk stalled,
    emitting returns at once; once it answers, every event lands, in order, with its time."""
    import threading

    from loratop.trainer.event_sink import BackgroundSink, EventSink

    sink = EventSink(tmp_path / "events.jsonl")
    disk = threading.Event()
    write = sink._write

    def stalled(line: bytes) -> bool:
        disk.wait(30)  # the disk does not answer until the test says so
        return write(line)

    sink._write = stalled  # type: ignore[method-assign]
    queued = BackgroundSink(sink)
    before = time.time()

    def steps() -> None:
        for step in range(1, 101):
            queued.emit(ev.STEP, step=step, loss=1.0, lr=1e-4, grad_norm=0.5, tokens=step, epoch=0.1, step_time_s=0.01)

    emitter = threading.Thread(target=steps)
    emitter.start()
    emitter.join(5)
    assert not emitter.is_alive(), "a step waited for the disk"
    assert queued.queued >= 99
    disk.set()
    queued.close()
    events = read_events(tmp_path)
    assert [e["step"] for e in events] == list(range(1, 101)) and [e["seq"] for e in events] == list(range(100))
    times = [e["t"] for e in events]
    assert times == sorted(times) and times[-1] < before + 5, "each event keeps the time it happened"


def test_a_script_run_writes_its_events_from_a_thread_of_its_own(tmp_path: Path) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from loratop.trainer.callback import LoratopCallback
    from loratop.trainer.event_sink import BackgroundSink

    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    state, control = TrainerState(), TrainerControl()
    callback = LoratopCallback(run_dir=tmp_path / "run")
    callback.on_train_begin(args, state, control)
    assert isinstance(callback.sink, BackgroundSink)
    callback.on_train_end(args, state, control)
    assert (read_status(tmp_path / "run") or {})["status"] == ev.COMPLETED
    assert [e["type"] for e in read_events(tmp_path / "run")][-1] == ev.RUN_FINISHED
