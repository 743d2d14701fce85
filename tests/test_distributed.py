"""Runs of several ranks through torchrun (issue 14): the real launcher on CPU ranks (gloo).

The slow tests start ``loratop``'s launcher, which starts torchrun's agent
(``trainer.agent``), which starts the real trainer once per rank. Nothing is faked:
the ranks train the tiny model and gather their memory over a real process group.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from rich.text import Text

from loratop.core import events as ev
from loratop.core.distributed import (
    RankInfo,
    check_distributed,
    describe_failure,
    rank_info,
    torchrun_args,
    worst_rank,
)
from loratop.core.run_state import RunState
from loratop.core.run_summary import fold_run, run_facts
from loratop.preflight.config import ConfigError, DistributedSection, load_config, parse_overrides
from loratop.preflight.launcher import launch
from loratop.trainer.agent import Relay, events_tail
from loratop.trainer.event_sink import EventSink
from loratop.tui.models.panels import events_text, header_lines, outcome_text
from loratop.widgets.memory_panel import rank_lines
from tests.conftest import DEMO_CONFIG, REPO, free_port, loratop, of_type, read_events, status_of, until

FAST = ["training.per_device_train_batch_size=1", "training.max_seq_length=64", "data.max_rows=64"]
"""Short steps: two ranks share this machine's two cores."""


def _config(tmp_path: Path, name: str, *overrides: str) -> Any:
    sets = parse_overrides([f"output_dir={tmp_path / name}", "distributed.nproc_per_node=2", *FAST, *overrides])
    return load_config(DEMO_CONFIG, sets)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- the pieces, without processes -------------------------------------------------------


def test_rank_info_reads_torchruns_variables() -> None:
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    info = rank_info(env)
    assert info == RankInfo(rank=3, local_rank=1, world_size=4, node_rank=1, local_world_size=2)
    assert info.distributed and not info.is_main and info.label == "1:1"
    assert rank_info({}) == RankInfo() and not RankInfo().distributed and RankInfo().is_main
    assert rank_info({"WORLD_SIZE": "1", "RANK": "0"}) == RankInfo()


def test_config_takes_a_distributed_section_like_any_other() -> None:
    config = load_config(DEMO_CONFIG, parse_overrides(["distributed.nproc_per_node=2"]))
    assert config.distributed.world_size == 2 and config.distributed.strategy == "ddp"
    with pytest.raises(ConfigError) as err:
        load_config(DEMO_CONFIG, parse_overrides(["distributed.nproc_per_node=0"]))
    assert any("distributed.nproc_per_node" in line for line in err.value.problems)
    with pytest.raises(ConfigError) as err:
        load_config(DEMO_CONFIG, parse_overrides(["distributed.strategy=zero3"]))
    assert any("'ddp'" in line and "'fsdp'" in line for line in err.value.problems)


def test_check_distributed_says_each_problem_in_one_line() -> None:
    def problems(gpus: int, **fields: Any) -> list[str]:
        return check_distributed(DistributedSection(**fields), gpus, "no NVIDIA driver")

    assert problems(0) == [] and problems(0, nproc_per_node=2) == []  # CPU ranks over gloo are fine
    assert problems(2, nproc_per_node=2) == []
    (line,) = problems(1, nproc_per_node=2)
    assert "nproc_per_node = 2" in line and "only 1 GPU" in line
    (line,) = problems(0, nproc_per_node=2, strategy="fsdp")
    assert "fsdp" in line and "no NVIDIA driver" in line
    (line,) = problems(0, nproc_per_node=2, backend="nccl")
    assert "nccl" in line and "gloo" in line
    (line,) = problems(0, nnodes=2)
    assert "rdzv_endpoint" in line
    lines = problems(0, nnodes=2, node_rank=2, rdzv_endpoint="box")
    assert len(lines) == 2 and "node_rank = 2" in lines[0] and "host:port" in lines[1]
    assert problems(0, nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29500") == []
    assert all("\n" not in line for line in lines)


def test_fsdp_on_a_cpu_box_is_a_warning_in_check_and_a_refusal_in_run(tmp_path: Path) -> None:
    """issue 26, item 5: a fact about this box is no config error: check says it and goes on
    checking the rest; run refuses it in one line."""
    fsdp = ["--set", "distributed.strategy=fsdp", "--set", "distributed.nproc_per_node=2"]
    result = loratop("check", str(DEMO_CONFIG), *fsdp)
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stdout.splitlines() if "distributed.strategy = 'fsdp'" in line)
    assert warning.startswith("warning: ") and warning.endswith("(run refuses it on this box)")
    assert "nothing was launched" not in result.stdout + result.stderr
    run = loratop("run", str(DEMO_CONFIG), *fsdp, "--set", f"output_dir={tmp_path / 'run'}", "--no-tui")
    assert run.returncode == 2 and run.stderr.strip().endswith("; nothing was launched"), run.stderr
    assert "distributed.strategy = 'fsdp'" in run.stderr and not (tmp_path / "run").exists()
    ok = loratop("check", str(DEMO_CONFIG), "--set", "distributed.nproc_per_node=2")
    assert ok.returncode == 0, ok.stderr
    assert "ranks   2 = 2 per node × 1 node(s), ddp" in ok.stdout


def test_torchrun_args_one_box_and_several() -> None:
    assert torchrun_args(DistributedSection(nproc_per_node=2))[-1] == "--standalone"
    args = torchrun_args(DistributedSection(nproc_per_node=4, nnodes=2, node_rank=1, rdzv_endpoint="10.1.2.3:29555"))
    joined = " ".join(args)
    assert "--nproc_per_node 4" in joined and "--nnodes 2" in joined and "--node_rank 1" in joined
    assert "--master_addr 10.1.2.3" in joined and "--master_port 29555" in joined and "--max_restarts 0" in joined


def test_failures_and_the_worst_rank_in_words() -> None:
    line = describe_failure(3, {"node": 1, "local_rank": 1, "pid": 42, "exit_code": -9, "host": "box2"})
    assert line == "rank 3 (node 1, local rank 1, host box2, pid 42) killed by SIGKILL"
    assert describe_failure(0, {"node": 0, "local_rank": 0, "exit_code": 3}).endswith("exited with code 3")
    gpu_rows = [{"gpu": {"used": 10, "total": 100}, "rss": 9}, {"gpu": {"used": 90, "total": 100}, "rss": 1}]
    assert worst_rank(gpu_rows) == 1
    assert worst_rank([{"gpu": None, "rss": 5}, {"gpu": None, "rss": 7}, {"gpu": None, "rss": 6}]) == 1
    assert worst_rank([]) is None


RANKS_EVENT: dict[str, Any] = {
    "v": 1, "seq": 9, "t": 1.0, "type": ev.RANKS, "step": 4, "world_size": 4, "worst": 2,
    "ranks": [
        {"rank": r, "node": r // 2, "local_rank": r % 2, "pid": 100 + r, "rss": 1 << 30,
         "gpu": {"index": r % 2, "used": (40 + 10 * (r == 2)) << 30, "total": 80 << 30},
         "oom_level": "danger" if r == 2 else "ok", "spills": r, "spill_bytes": r << 20}
        for r in range(4)
    ],
}  # fmt: skip


def test_rank_rows_in_the_memory_panel_mark_the_worst() -> None:
    lines = [line.plain for line in rank_lines(RANKS_EVENT, 40)]
    assert lines[0] == "4 ranks · worst 1:0"
    assert len(lines) == 5 and all(Text(line).cell_len <= 40 for line in lines)
    assert lines[3].startswith("1:0 gpu0") and lines[3].endswith("◀") and "50.0/80.0 GiB" in lines[3]
    assert sum(line.endswith("◀") for line in lines) == 1
    few = [line.plain for line in rank_lines(RANKS_EVENT, 40, max_rows=2)]
    assert "1:0" in few[2] and few[-1] == "… 2 more rank(s)"  # the worst is always among them
    cpu = {"world_size": 2, "worst": 0, "ranks": [{"node": 0, "local_rank": i, "rss": 600 << 20, "gpu": None}
                                                 for i in range(2)]}  # fmt: skip
    cpu_lines = [line.plain for line in rank_lines(cpu, 40)]
    assert cpu_lines[0].startswith("2 ranks (CPU") and cpu_lines[1] == "0:0 rss 600 MiB ◀"


def test_ranks_fold_into_the_state_peaks_over_ranks_and_worst_in_header() -> None:
    state = RunState(Path("r"))
    state.apply({"v": 1, "seq": 0, "t": 0.5, "type": ev.RUN_STARTED, "device": {"kind": "cuda", "name": "A100",
                 "world_size": 4}, "max_steps": 10})  # fmt: skip
    state.apply(RANKS_EVENT)
    assert state.world_size == 4 and state.peak_gpu_used == 50 << 30 and state.rank_peaks[2]["gpu"] == 50 << 30
    first = header_lines(state, 2.0)[0]
    assert "×4 ranks" in first and first.endswith("· OOM DANGER 1:0")  # the worst rank, in the header
    text = events_text(state)
    assert "OOM risk DANGER (worst of 4 ranks: 1:0)" in text
    assert "spills 6 on 4 ranks; most on rank 1:1: 3" in text
    assert run_facts(state, 2.0)["world_size"] == 4 and run_facts(state, 2.0)["spills"] == 6


def test_a_lost_rank_is_the_outcome_and_the_status() -> None:
    state = RunState(Path("r"))
    state.apply({"v": 1, "seq": 0, "t": 1.0, "type": ev.RUN_FINISHED, "status": "failed", "duration_s": 3.0,
                 "error": {"message": "RuntimeError: Connection reset by peer", "traceback": []}})  # fmt: skip
    message = "rank 1 (node 0, local rank 1, pid 7) killed by SIGKILL at step 5"
    state.apply({"v": 1, "seq": 1, "t": 1.1, "type": ev.ALERT, "kind": "rank_lost", "message": message, "rank": 1})
    text = outcome_text(state)
    assert text is not None and text.splitlines()[0] == f"failed after 3s: {message}"
    assert "rank 0 saw: RuntimeError: Connection reset by peer" in text
    assert state.status == ev.FAILED


def test_the_agent_appends_after_rank_0_with_the_next_seq(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = EventSink(path)
    sink.emit(ev.STEP, step=1, loss=1.0)
    sink.emit(ev.STEP, step=2, loss=0.9)
    sink.close()
    next_seq, last_step, finished = events_tail(path)
    assert (next_seq, last_step, finished) == (2, 2, None)
    more = EventSink(path, start_seq=next_seq)
    more.emit(ev.ALERT, kind="rank_lost", step=2, message="rank 1 … killed by SIGKILL")
    more.close()
    events = read_events(tmp_path)
    assert [e["seq"] for e in events] == [0, 1, 2] and events[-1]["type"] == ev.ALERT


def test_relay_passes_whole_lines_and_survives_the_reader_leaving(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": 3')  # the last line is not whole yet
    read_fd, write_fd = os.pipe()
    relay = Relay(path, write_fd)
    relay.pass_on()
    assert os.read(read_fd, 1000) == b'{"a": 1}\n{"b": 2}\n'
    with path.open("ab") as fh:
        fh.write(b"}\n")
    relay.pass_on()
    assert os.read(read_fd, 1000) == b'{"c": 3}\n'
    os.close(read_fd)
    with path.open("ab") as fh:
        fh.write(b'{"d": 4}\n')
    relay.pass_on()  # EPIPE: the watcher is gone; the relay closes, the run goes on
    relay.pass_on()
    relay.close()


# -- real ranks ------------------------------------------------------------------------


def _first_ranks_report(run_dir: Path, timeout: float = 180) -> list[dict[str, Any]]:
    """The rows of the first ``ranks`` event rank 0 writes (the ranks are then training)."""
    path = run_dir / "events.jsonl"
    deadline = time.monotonic() + timeout
    while True:
        reports = of_type(read_events(run_dir), ev.RANKS) if path.exists() else []
        if reports:
            return list(reports[-1]["ranks"])
        assert time.monotonic() < deadline, "no ranks report"
        time.sleep(0.5)


def _ranks_children(agent: int) -> list[psutil.Process]:
    return psutil.Process(agent).children()


@pytest.mark.slow
def test_two_ranks_in_the_dashboard_checkpoint_and_stop_at_one_step(tmp_path: Path) -> None:
    """The real launcher starts 2 CPU ranks; the dashboard shows both; c and s reach both."""
    from loratop.tui.app import LoratopApp
    from loratop.tui.screens.monitor_screen import MonitorScreen

    config = _config(tmp_path, "run", "training.max_steps=3000")
    run = launch(config, DEMO_CONFIG)
    app = LoratopApp(run.run_dir, run.events_fd, process=run.process)

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            await until(pilot, lambda: screen.state.ranks is not None and screen.state.last_step >= 3, 180, "2 ranks")
            panel = lambda: str(screen.query_one("#memory").render())  # noqa: E731 - redrawn once a second
            await until(pilot, lambda: "2 ranks (CPU" in panel(), 10, "the rank rows")
            assert "0:0 rss" in panel() and "0:1 rss" in panel() and "◀" in panel()
            assert "×2 ranks" in str(screen.query_one("#run-header").render())
            await pilot.press("c")
            await until(pilot, lambda: bool(screen.state.checkpoints), 60, "the checkpoint")
            await until(pilot, lambda: screen.state.last_step >= screen.state.checkpoints[0]["step"] + 5, 60, "steps")
            await pilot.press("s")
            await pilot.press("y")
            await until(pilot, lambda: screen.state.finished is not None, 120, "the stop")
            await pilot.press("q")

    asyncio.run(drive())
    assert run.process.wait(timeout=60) == 0
    events = read_events(run.run_dir)
    assert [e["seq"] for e in events] == list(range(len(events)))
    finished = of_type(events, ev.RUN_FINISHED)[-1]
    assert finished["status"] == ev.STOPPED and finished["stopped_by"] == "SIGTERM"
    ranks = of_type(events, ev.RANKS)
    assert ranks and all(r["world_size"] == 2 for r in ranks)
    rows = ranks[-1]["ranks"]
    assert [r["rank"] for r in rows] == [0, 1] and len({r["pid"] for r in rows}) == 2
    assert all(isinstance(r["rss"], int) and r["rss"] > 0 and r["gpu"] is None and r["gpu_note"] for r in rows)
    assert of_type(events, ev.RUN_STARTED)[0]["device"]["world_size"] == 2
    # Both ranks acted at the same step (each says so in trainer.log), and one adapter was saved.
    log = (run.run_dir / "trainer.log").read_text()
    for what in ("SIGUSR1: saving a checkpoint", "SIGTERM: stopping"):
        steps = {int(m.group(2)) for m in re.finditer(rf"loratop rank (\d): {what} after step (\d+)", log)}
        said = re.findall(rf"loratop rank (\d): {what}", log)
        assert sorted(said) == ["0", "1"] and len(steps) == 1, (what, said, steps)
    (checkpoint,) = [c for c in of_type(events, ev.CHECKPOINT) if not c["final"]]
    assert re.search(rf"SIGUSR1: saving a checkpoint after step {checkpoint['step']}\b", log)
    assert sorted(p.name for p in run.run_dir.iterdir() if p.name.startswith(("checkpoint-", "adapter"))) == [
        "adapter",
        f"checkpoint-{checkpoint['step']}",
    ]
    assert finished["step"] == of_type(events, ev.STEP)[-1]["step"]
    status = status_of(run.run_dir)
    assert status["status"] == ev.STOPPED and status["exit_code"] == 0 and status["pid"] == run.process.pid
    # ls, compare and export know it ran on 2 ranks.
    listing = loratop("--runs-dir", str(tmp_path), "ls")
    assert re.search(r"run\s+stopped\s+.*×2", listing.stdout), listing.stdout
    exported = loratop("export", str(run.run_dir), "-o", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    (csv_path,) = (tmp_path / "out").glob("*metrics*.csv")
    rows_csv = _rows(csv_path)
    assert rows_csv[-1]["ranks"] == "2" and int(rows_csv[-1]["max_rank_rss_bytes"]) > 0
    assert fold_run(run.run_dir)[0].world_size == 2


@pytest.mark.slow
@pytest.mark.faults
def test_one_rank_killed_ends_the_run_within_seconds_naming_it(tmp_path: Path) -> None:
    """kill -9 of rank 1: torchrun ends rank 0, the agent says which rank died and how."""
    run = launch(_config(tmp_path, "run", "training.max_steps=3000"), DEMO_CONFIG)
    os.close(run.events_fd)
    rows = _first_ranks_report(run.run_dir)
    victim = rows[1]["pid"]
    # Signal only what is proven to be this run's rank: a child of the agent we launched.
    assert victim in [p.pid for p in _ranks_children(run.process.pid)]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    assert run.process.wait(timeout=60) == 1
    took = time.monotonic() - killed_at
    assert took < 35, f"the run took {took:.1f} s to end"
    assert not psutil.pid_exists(rows[0]["pid"]) or psutil.Process(rows[0]["pid"]).status() == "zombie"
    events = read_events(run.run_dir)
    (alert,) = of_type(events, ev.ALERT)
    assert alert["kind"] == "rank_lost" and alert["rank"] == 1 and alert["node"] == 0 and alert["exit_code"] == -9
    assert alert["message"].startswith(f"rank 1 (node 0, local rank 1, host {socket.gethostname()}, pid {victim}) "
                                       "killed by SIGKILL at step")  # fmt: skip
    assert of_type(events, ev.RUN_FINISHED)[-1]["status"] == ev.FAILED
    status = status_of(run.run_dir)
    assert status["status"] == ev.FAILED and status["exit_code"] == 1 and "rank 1" in status["error"]
    state = fold_run(run.run_dir)[0]
    assert state.status == ev.FAILED and "killed by SIGKILL" in (outcome_text(state) or "")
    listing = loratop("--runs-dir", str(tmp_path), "ls")
    assert re.search(r"run\s+failed", listing.stdout), listing.stdout


@pytest.mark.slow
def test_two_nodes_on_one_machine_form_one_run(tmp_path: Path) -> None:
    """Two launchers, node_rank 0 and 1, meet at 127.0.0.1: node 0's run reports all four ranks."""
    endpoint = f"127.0.0.1:{free_port()}"
    common = ["distributed.nnodes=2", f"distributed.rdzv_endpoint={endpoint}", "training.max_steps=6"]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loratop.cli.main",
                "run",
                str(DEMO_CONFIG),
                "--no-tui",
                *[
                    a
                    for s in [
                        f"output_dir={tmp_path / f'node{n}'}",
                        "distributed.nproc_per_node=2",
                        f"distributed.node_rank={n}",
                        *FAST,
                        *common,
                    ]
                    for a in ("--set", s)
                ],
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for n in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert "node 1 of 2: ranks 2–3 train here" in outputs[1] and "every rank here finished" in outputs[1]
    assert "torchrun agent pid" in outputs[0] and "2 rank(s) here" in outputs[0]
    events = read_events(tmp_path / "node0")
    ranks = of_type(events, ev.RANKS)[-1]
    assert ranks["world_size"] == 4
    assert [(r["rank"], r["node"], r["local_rank"]) for r in ranks["ranks"]] == [
        (0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)
    ]  # fmt: skip
    assert of_type(events, ev.RUN_FINISHED)[-1]["status"] == ev.COMPLETED
    assert (tmp_path / "node0" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "node1" / "adapter").exists()  # one adapter, on node 0
    node1 = read_events(tmp_path / "node1")
    assert "events, adapter and dashboard are on node 0" in of_type(node1, ev.LOG)[0]["message"]
    assert of_type(node1, ev.RUN_FINISHED)[0]["status"] == ev.COMPLETED
    assert json.loads((tmp_path / "node1" / "status.json").read_text())["distributed"]["node_rank"] == 1


# -- what the Trainer is given (the CPU side of the GPU-only paths) -------------------------


def _run(tmp_path: Path, rank: RankInfo, *overrides: str) -> Any:
    from loratop.trainer.train import NullSink, Run

    config = load_config(DEMO_CONFIG, parse_overrides([f"output_dir={tmp_path}", *overrides]), check_files=False)
    return Run(config, tmp_path, NullSink(), rank)


def test_trainer_arguments_for_ddp_and_fsdp(tmp_path: Path) -> None:
    """What the Hugging Face Trainer is given per strategy; the FSDP one is accepted by TRL's SFTConfig."""
    from trl import SFTConfig

    two = RankInfo(rank=1, local_rank=1, world_size=2, local_world_size=2)
    assert _run(tmp_path, RankInfo())._distributed_args(cuda=False) == {}  # one process: untouched
    ddp = _run(tmp_path, two, "distributed.nproc_per_node=2")._distributed_args(cuda=False)
    assert ddp == {"ddp_backend": "gloo", "ddp_timeout": 300, "ddp_find_unused_parameters": False}
    assert _run(tmp_path, two, "distributed.nproc_per_node=2")._distributed_args(cuda=True)["ddp_backend"] == "nccl"
    fsdp = _run(tmp_path, two, "distributed.nproc_per_node=2", "distributed.strategy=fsdp",
                "distributed.timeout_s=1800")._distributed_args(cuda=True)  # fmt: skip
    assert fsdp["fsdp"] is True and fsdp["ddp_timeout"] == 1800
    assert fsdp["fsdp_config"]["version"] == 2 and fsdp["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
    # Outside torchrun (no process group) only the FSDP part can be checked.
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], fsdp=True, fsdp_config=fsdp["fsdp_config"])
    assert args.fsdp_config["reshard_after_forward"] is True and args.fsdp_config["version"] == 2


def _cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus_train_the_tiny_model(tmp_path: Path, strategy: str) -> None:
    """On a box with two GPUs: DDP and QLoRA-FSDP through the real launcher, one adapter."""
    if _cuda_devices() < 2:
        pytest.skip("needs two CUDA GPUs")
    run = launch(_config(tmp_path, "run", "training.max_steps=20", f"distributed.strategy={strategy}"), DEMO_CONFIG)
    os.close(run.events_fd)
    assert run.process.wait(timeout=600) == 0, (run.run_dir / "trainer.log").read_text()[-3000:]
    events = read_events(run.run_dir)
    assert of_type(events, ev.RUN_FINISHED)[-1]["status"] == ev.COMPLETED
    rows = of_type(events, ev.RANKS)[-1]["ranks"]
    assert sorted(r["gpu"]["cuda_index"] for r in rows) == [0, 1]
    assert (run.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_a_signal_waits_until_the_rank_catches_it(tmp_path: Path) -> None:
    """A rank still starting would die of SIGUSR1's default action: the agent waits for its handler."""
    from loratop.trainer.agent import Forwarder, catches

    got, barrier = tmp_path / "got", tmp_path / "barrier"
    child = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time, pathlib\n"
        "sys.stdin.readline()\n"  # a rank still starting: no handler until the test says go
        f"signal.signal(signal.SIGUSR1, lambda *a: pathlib.Path({str(got)!r}).write_text('usr1'))\n"
        f"signal.signal(signal.SIGUSR2, lambda *a: pathlib.Path({str(barrier)!r}).write_text('usr2'))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        forwarder = Forwarder(1, children=lambda: [child.pid])
        forwarder.handle(signal.SIGUSR1, None)
        assert not catches(child.pid, signal.SIGUSR1)
        forwarder.deliver()  # not caught yet: held back, the child lives
        assert child.poll() is None and not got.exists()
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "ready\n", "a SIGUSR1 sent early would have killed it"
        assert catches(child.pid, signal.SIGUSR1)
        forwarder.deliver()
        deadline = time.monotonic() + 10
        while not got.exists():
            assert time.monotonic() < deadline, "the signal never arrived"
            time.sleep(0.05)
        assert child.poll() is None  # caught, not killed
        got.unlink()
        forwarder.deliver()  # delivered once: nothing more is sent (deliver() sends, if at all, before it returns)
        # A barrier: a SIGUSR2 sent now is handled after any SIGUSR1 sent before it (the kernel
        # hands over the lower-numbered pending signal first; Python runs handlers in that order).
        os.kill(child.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not barrier.exists():
            assert time.monotonic() < deadline, "the barrier signal never arrived"
            time.sleep(0.05)
        assert not got.exists()
    finally:
        child.kill()
        child.wait()


def _ended_run(tmp_path: Path, finished: dict[str, Any] | None) -> Path:
    from loratop.core.run_dir import write_status

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sink = EventSink(run_dir / "events.jsonl")
    sink.emit(ev.STEP, step=7, loss=1.0)
    if finished is not None:
        sink.emit(ev.RUN_FINISHED, **finished)
    sink.close()
    write_status(run_dir, state="finished" if finished else "running", pid=123)
    return run_dir


@pytest.mark.parametrize(
    ("finished", "failure", "alert"),
    [
        # Every rank met the same error and rank 0 said why: the run failed, no rank was lost.
        ({"status": "failed", "error": {"message": "lora.target_modules = ['x']: not found"}},
         {"rank": 1, "node": 0, "local_rank": 1, "pid": 9, "exit_code": 1, "exits": {0: 1, 1: 1}}, False),
        # Rank 1 was killed; rank 0 only saw its peer vanish.
        ({"status": "failed", "error": {"message": "RuntimeError: [gloo] Connection reset by peer"}},
         {"rank": 1, "node": 0, "local_rank": 1, "pid": 9, "exit_code": -9, "exits": {1: -9, 0: 1}}, True),
        # Rank 0 itself was killed: no report at all; the agent writes the run_finished.
        (None, {"rank": 0, "node": 0, "local_rank": 0, "pid": 8, "exit_code": -9, "exits": {0: -9}}, True),
    ],
    ids=["same-error", "peer-killed", "rank0-killed"],
)  # fmt: skip
def test_the_agent_names_a_lost_rank_only_when_one_was_lost(
    tmp_path: Path, finished: dict[str, Any] | None, failure: dict[str, Any], alert: bool
) -> None:
    from loratop.trainer.agent import _finish

    run_dir = _ended_run(tmp_path, finished)
    assert _finish(run_dir, failure, 0, 3.0) == 1
    events = read_events(run_dir)
    alerts = of_type(events, ev.ALERT)
    assert bool(alerts) == alert
    (last,) = of_type(events, ev.RUN_FINISHED)  # exactly one, whoever wrote it
    status = status_of(run_dir)
    assert status["exit_code"] == 1
    if alert:
        words = "killed by SIGKILL at step 7"
        assert alerts[0]["message"].startswith(f"rank {failure['rank']} (node 0") and alerts[0]["message"].endswith(
            words
        )
        assert status["status"] == ev.FAILED and words in status["error"]
        assert fold_run(run_dir)[0].status == ev.FAILED
    else:
        assert last["error"]["message"].startswith("lora.target_modules")


@pytest.mark.parametrize("rank0_finished", [True, False], ids=["after-rank0-cached", "rank0-killed"])
def test_the_agents_end_leaves_the_runs_caches_for_ls(tmp_path: Path, rank0_finished: bool) -> None:
    """The agent owns the run's end: its alert and ``run_finished`` come after whatever rank 0
    cached, so it writes the caches again (listing never does), and ``ls`` reads them."""
    from loratop.core.run_index import load_index
    from loratop.core.run_summary import cached_facts, settle_finished_run
    from loratop.core.runs import summarise_run
    from loratop.trainer.agent import _finish

    finished = {"status": "failed", "error": {"message": "RuntimeError: [gloo] Connection reset by peer"}}
    run_dir = _ended_run(tmp_path, finished if rank0_finished else None)
    if rank0_finished:
        assert settle_finished_run(run_dir)  # as rank 0's trainer does last
    failure = {"rank": 1, "node": 0, "local_rank": 1, "pid": 9, "exit_code": -9, "exits": {1: -9, 0: 1}}
    assert _finish(run_dir, failure, 0, 3.0) == 1
    facts = cached_facts(run_dir)
    assert facts is not None and facts["status"] == ev.FAILED and facts["step"] == 7
    assert load_index(run_dir) is not None
    assert summarise_run(run_dir).status == ev.FAILED


def test_a_peer_lost_on_another_box_is_said_so(tmp_path: Path) -> None:
    """Node 0 sees only its own ranks exit after a collective failed: it says where to look."""
    from loratop.trainer.agent import _finish

    finished = {"status": "failed", "error": {"message": "RuntimeError: [gloo] Connection closed by peer"}}
    run_dir = _ended_run(tmp_path, finished)
    failure = {"rank": 0, "node": 0, "local_rank": 0, "pid": 8, "exit_code": 1, "exits": {0: 1, 1: 1}}
    assert _finish(run_dir, failure, 0, 3.0) == 1
    (alert,) = of_type(read_events(run_dir), ev.ALERT)
    assert alert["message"].endswith("exited with code 1 at step 7 after losing a peer (a rank on another box?: "
                                     "see that box's trainer.log)")  # fmt: skip


@pytest.mark.slow
@pytest.mark.faults
def test_the_agent_killed_the_ranks_stop_gracefully_and_say_why(tmp_path: Path) -> None:
    """kill -9 of torchrun's agent (the pid status.json names): its ranks, now orphans, notice
    at their next meeting, stop at one step and save the adapter, rather than train unwatched."""
    run = launch(_config(tmp_path, "run", "training.max_steps=3000"), DEMO_CONFIG)
    os.close(run.events_fd)
    rows = _first_ranks_report(run.run_dir)
    ranks = [r["pid"] for r in rows]
    run.process.kill()  # our own child
    run.process.wait(timeout=10)
    deadline = time.monotonic() + 60
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in ranks):
        assert time.monotonic() < deadline, "the orphaned ranks went on training"
        time.sleep(0.2)
    events = read_events(run.run_dir)
    finished = of_type(events, ev.RUN_FINISHED)[-1]
    assert finished["status"] == ev.STOPPED and finished["stopped_by"] == "torchrun agent gone"
    assert (run.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    log = (run.run_dir / "trainer.log").read_text()
    steps = set(re.findall(r"loratop rank \d: torchrun agent gone: stopping after step (\d+)", log))
    assert len(steps) == 1, log[-2000:]


@pytest.mark.faults
def test_the_agents_last_words_survive_a_removed_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rank 0 saw its folder removed (and rescued the run): the agent says so and makes nothing again."""
    import shutil

    from loratop.trainer.agent import _finish

    run_dir = _ended_run(tmp_path, None)
    shutil.rmtree(run_dir)
    failure = {"rank": 0, "node": 0, "local_rank": 0, "pid": 8, "exit_code": -9, "exits": {0: -9}}
    assert _finish(run_dir, failure, 0, 3.0) == 1
    assert not run_dir.exists()
    assert f"{run_dir} is gone" in capsys.readouterr().err


@pytest.mark.faults
def test_the_agents_last_words_on_a_full_disk_are_said_not_raised(tmp_path: Path) -> None:
    """A file-size limit stands in for a full disk: neither the alert nor status.json fits."""
    run_dir = _ended_run(tmp_path, None)
    before = (run_dir / "events.jsonl").read_bytes()
    limit = len(before)  # not one byte more may be written to any file
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "from pathlib import Path\n"
        "from loratop.trainer.agent import _finish\n"
        "failure = {'rank': 1, 'node': 0, 'local_rank': 1, 'pid': 9, 'exit_code': -9, 'exits': {1: -9}}\n"
        f"sys.exit(_finish(Path({str(run_dir)!r}), failure, 0, 3.0))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1, result.stderr  # the run failed; the agent did not crash
    assert "Traceback" not in result.stderr
    assert "rank 1 (node 0, local rank 1" in result.stderr  # said where it can still be read: trainer.log
    assert "cannot write" in result.stderr
    assert (run_dir / "events.jsonl").read_bytes() == before  # no torn line left behind
