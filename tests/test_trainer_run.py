"""The real trainer subprocess on the embedded tiny model: the issue's acceptance runs."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loratop.core import events as ev
from loratop.preflight.config import load_config
from loratop.preflight.launcher import launch
from scripts import readme_examples
from tests.conftest import DEMO_CONFIG, REPO, loratop, of_type, read_events, status_of, wait_for_exit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``loratop run sample_configs/tiny-cpu-demo.yaml --no-tui``, exactly as a user runs it."""
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    result = loratop("run", str(DEMO_CONFIG), "--no-tui", "--set", f"output_dir={run_dir}")
    return result, run_dir


def test_demo_run_completes_with_a_full_event_history(demo_run: tuple[Any, Path]) -> None:
    result, run_dir = demo_run
    assert result.returncode == 0, result.stdout + result.stderr
    events = read_events(run_dir)
    assert [e["seq"] for e in events] == list(range(len(events))), "seq must run 0..N-1 without a gap"
    started = of_type(events, ev.RUN_STARTED)
    finished = of_type(events, ev.RUN_FINISHED)
    assert len(started) == 1 and len(finished) == 1
    assert finished[0]["status"] == ev.COMPLETED
    assert events[-1]["type"] == ev.RUN_FINISHED
    max_steps = started[0]["max_steps"]
    steps = of_type(events, ev.STEP)
    assert [s["step"] for s in steps] == list(range(1, max_steps + 1)), "one step event per optimizer step"
    assert of_type(events, ev.SPIKE) == [], "a healthy demo run raises no spike"
    assert all(isinstance(s["loss"], float) and math.isfinite(s["loss"]) for s in steps)
    assert all(s["lr"] is not None and s["grad_norm"] is not None for s in steps)
    tokens = [s["tokens"] for s in steps]
    assert tokens == sorted(tokens) and tokens[0] > 0, "tokens seen grow every step"
    assert len(of_type(events, ev.MEMORY)) >= 1
    loading = [e["message"] for e in of_type(events, ev.LOG) if e["message"].startswith("loading tiny: ")]
    assert loading and loading[-1].startswith("loading tiny: Loading weights "), "the load says what it is doing"
    done, total = loading[-1].rsplit(" ", 1)[1].split("/")
    assert done == total and int(total) > 0


def test_the_readme_headless_example_is_what_the_demo_prints(demo_run: tuple[Any, Path]) -> None:
    """README.md's block comes from scripts/readme_examples.py; a change to the output must rerun it."""
    result, _ = demo_run
    ours = readme_examples.headless_block(result.stdout + result.stderr)
    readme = readme_examples.readme_block("demo-headless").removeprefix("```\n").removesuffix("\n```")
    assert readme_examples.shape(ours) == readme_examples.shape(readme), "rerun scripts/readme_examples.py --write"


def test_a_finished_demo_leaves_its_index_and_summary_for_ls(demo_run: tuple[Any, Path]) -> None:
    """The trainer indexed the run as it went and cached its summary as it finished."""
    import json

    from loratop.core.run_index import INDEX, load_index
    from loratop.core.run_summary import SUMMARY, fold_run
    from loratop.core.runs import read_run
    from tests.conftest import assert_same_fold, slow_fold

    _, run_dir = demo_run
    assert load_index(run_dir) is not None
    assert_same_fold(fold_run(run_dir)[0], slow_fold(run_dir))
    cached = json.loads((run_dir / INDEX / SUMMARY).read_text())
    summary = read_run(run_dir)[1]
    assert cached["facts"]["step"] == summary.step and cached["facts"]["status"] == summary.status == "completed"


def test_demo_loss_falls(demo_run: tuple[Any, Path]) -> None:
    _, run_dir = demo_run
    losses = [s["loss"] for s in of_type(read_events(run_dir), ev.STEP)]
    tenth = max(1, len(losses) // 10)
    first, last = sum(losses[:tenth]) / tenth, sum(losses[-tenth:]) / tenth
    assert last < first * 0.9, f"loss did not clearly fall: first 10% {first:.3f}, last 10% {last:.3f}"


def test_demo_run_folder_and_honest_memory(demo_run: tuple[Any, Path]) -> None:
    result, run_dir = demo_run
    status = status_of(run_dir)
    assert status["state"] == "finished" and status["status"] == ev.COMPLETED and status["exit_code"] == 0
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    resolved = load_config(run_dir / "config.yaml", check_files=False)
    assert resolved.lora.r == 8 and resolved.output_dir == str(run_dir)
    # Library chatter goes to trainer.log, never into the event stream or our terminal output.
    log = (run_dir / "trainer.log").read_text()
    assert "train_runtime" in log
    assert "train_runtime" not in (run_dir / "events.jsonl").read_text()
    memory = of_type(read_events(run_dir), ev.MEMORY)[-1]
    assert memory["host"]["rss"] > 0
    assert memory["gpu_state"] == "no_nvidia_gpu" and memory["gpus"] == [], "no made-up GPU numbers on CPU"
    events = read_events(run_dir)
    (risk,) = of_type(events, ev.OOM_RISK)
    assert risk["level"] == "n/a" and "CPU run" in risk["reason"] and risk["predicted_peak"] is None
    (paged,) = of_type(events, ev.PAGED_STATE)
    assert paged["step"] == 1 and paged["paged_bytes"] == 0 and paged["unpaged_bytes"] > 0
    assert paged["spill_method"] == "n/a" and paged["spill_reason"] == "CPU run: nothing is paged"
    assert of_type(events, ev.SPILL) == []
    started = of_type(events, ev.RUN_STARTED)[0]
    assert started["data"]["worst_batch_tokens"] == 8 * started["data"]["longest_tokens"]
    assert "step 1/" in result.stdout and "run completed" in result.stdout


def test_trainable_fraction_equals_peft_count(demo_run: tuple[Any, Path]) -> None:
    """Rebuild the same model here and count with peft's own function."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from loratop.trainer.tiny_model import tiny_model_dir

    _, run_dir = demo_run
    cfg = load_config(run_dir / "config.yaml", check_files=False)
    folder, built = tiny_model_dir()
    assert not built, "the run must have cached the tiny model"
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        ),
        dtype=torch.bfloat16,
    )
    model = prepare_model_for_kbit_training(model)
    model = get_peft_model(
        model,
        LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.lora_alpha, target_modules=cfg.lora.target_modules),
    )
    trainable, total = model.get_nb_trainable_parameters()
    params = of_type(read_events(run_dir), ev.RUN_STARTED)[0]["params"]
    assert (params["trainable"], params["total"]) == (trainable, total)
    assert params["fraction"] == pytest.approx(trainable / total)
    # A numel() sum counts packed 4-bit weights at half size and overstates the fraction.
    assert sum(p.numel() for p in model.parameters()) < total
    assert params["base_frozen"] and params["lora_b_zero"] and params["unexpected"] == []
    assert params["groups"]["lora_A"]["tensors"] == params["groups"]["lora_B"]["tensors"] == 14


def _launch(tmp_path: Path, *overrides: str) -> Any:
    from loratop.preflight.config import parse_overrides

    sets = parse_overrides([f"output_dir={tmp_path / 'run'}", *overrides])
    return launch(load_config(DEMO_CONFIG, sets))


def _read_until(fd: int, decoder: ev.Decoder, predicate: Any) -> list[dict[str, Any]]:
    """Read the pipe until an event satisfies ``predicate`` (or EOF)."""
    seen = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return seen
        for event in decoder.feed(chunk):
            seen.append(event)
            if predicate(event):
                return seen


def test_signals_checkpoint_then_graceful_stop(tmp_path: Path) -> None:
    """SIGUSR1 saves a checkpoint and goes on; SIGTERM stops at a step boundary with the adapter saved."""
    run = _launch(tmp_path, "training.max_steps=2000")
    decoder = ev.Decoder()
    try:
        _read_until(run.events_fd, decoder, lambda e: e["type"] == ev.STEP and e["step"] >= 5)
        run.process.send_signal(signal.SIGUSR1)
        _read_until(run.events_fd, decoder, lambda e: e["type"] == ev.CHECKPOINT)
        _read_until(run.events_fd, decoder, lambda e: e["type"] == ev.STEP and e["step"] >= 20)
        run.process.send_signal(signal.SIGTERM)
        _read_until(run.events_fd, decoder, lambda e: False)
    finally:
        os.close(run.events_fd)
    assert run.process.wait(timeout=120) == 0
    events = read_events(run.run_dir)
    finished = of_type(events, ev.RUN_FINISHED)[0]
    assert finished["status"] == ev.STOPPED and finished["stopped_by"] == "SIGTERM"
    last_step = of_type(events, ev.STEP)[-1]["step"]
    assert 20 <= last_step < 2000
    checkpoints = of_type(events, ev.CHECKPOINT)
    mid, final = checkpoints[0], checkpoints[-1]
    assert not mid["final"] and 5 <= mid["step"] < last_step
    assert (Path(mid["path"]) / "adapter_model.safetensors").is_file()
    assert final["final"] and final["step"] == last_step
    assert (Path(final["path"]) / "adapter_model.safetensors").is_file()
    assert status_of(run.run_dir)["status"] == ev.STOPPED


def _headless_cli_at_first_step(run_dir: Path, max_steps: int) -> subprocess.Popen[str]:
    """``loratop run DEMO --no-tui`` in a subprocess, returned once it printed a step line."""
    cli = subprocess.Popen(
        [sys.executable, "-m", "loratop.cli.main", "run", str(DEMO_CONFIG), "--no-tui",
         "--set", f"output_dir={run_dir}", "--set", f"training.max_steps={max_steps}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert cli.stdout is not None
    for line in cli.stdout:
        if line.startswith("step "):
            return cli
    raise AssertionError("the CLI never printed a step line")


def test_reader_killed_mid_run_training_goes_on(tmp_path: Path) -> None:
    """SIGKILL the watching CLI (the pipe's reader): the run completes, the file has every event."""
    run_dir = tmp_path / "run"
    cli = _headless_cli_at_first_step(run_dir, max_steps=120)
    cli.kill()
    cli.wait()
    pid = status_of(run_dir)["pid"]
    wait_for_exit(pid)
    events = read_events(run_dir)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert [s["step"] for s in of_type(events, ev.STEP)] == list(range(1, 121))
    assert of_type(events, ev.RUN_FINISHED)[0]["status"] == ev.COMPLETED
    assert status_of(run_dir)["exit_code"] == 0


def test_ctrl_c_in_headless_mode_stops_and_exits_130(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cli = _headless_cli_at_first_step(run_dir, max_steps=2000)
    cli.send_signal(signal.SIGINT)
    assert cli.stdout is not None
    rest = cli.stdout.read()
    assert cli.wait(timeout=120) == 130
    # Issue 26, item 12: Ctrl-C is named as such, not as the SIGTERM a dashboard's s sends.
    assert "run stopped by SIGINT (Ctrl-C) after " in rest
    assert of_type(read_events(run_dir), ev.RUN_FINISHED)[0]["stopped_by"] == "SIGINT"
    assert status_of(run_dir)["status"] == ev.STOPPED
    assert (run_dir / "adapter" / "adapter_config.json").is_file()


@pytest.fixture
def restore_signal_handlers() -> Any:
    """The trainer's ``main()`` installs its handlers (SIGHUP ignored, SIGUSR1 checkpoint) in
    the process that calls it; put every one back, or a dashboard a later test starts inherits
    an ignored SIGHUP and the hang-up test proves nothing."""
    names = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
    saved = {sig: signal.getsignal(sig) for sig in names}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("restore_signal_handlers")
def test_refuses_to_train_an_unfrozen_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The classic bug: a base weight left trainable. The run refuses and names the tensor."""
    import peft

    real = peft.get_peft_model

    def get_peft_model_then_unfreeze(model: Any, config: Any, *args: Any, **kwargs: Any) -> Any:
        peft_model = real(model, config, *args, **kwargs)
        peft_model.base_model.model.model.embed_tokens.weight.requires_grad_(True)
        return peft_model

    monkeypatch.setattr(peft, "get_peft_model", get_peft_model_then_unfreeze)
    from loratop.trainer.train import main

    run_dir = tmp_path / "run"
    code = main([str(DEMO_CONFIG), "--run-dir", str(run_dir)])
    assert code == 1
    events = read_events(run_dir)
    finished = of_type(events, ev.RUN_FINISHED)[0]
    assert finished["status"] == ev.FAILED
    assert "embed_tokens.weight" in finished["error"]["message"]
    assert "refusing to train" in finished["error"]["message"]
    assert of_type(events, ev.STEP) == [], "not a single step may run"
    assert status_of(run_dir)["status"] == ev.FAILED


def test_local_prompt_completion_file(tmp_path: Path) -> None:
    """A user's own JSONL file (prompt/completion) trains through the same path."""
    data = tmp_path / "pairs.jsonl"
    rows = [f'{{"prompt": "What is {i} plus {i}?", "completion": " {2 * i}."}}' for i in range(64)]
    data.write_text("\n".join(rows) + "\n")
    run_dir = tmp_path / "run"
    result = loratop(
        "run", str(DEMO_CONFIG), "--no-tui",
        "--set", f"output_dir={run_dir}", "--set", f"data.path={data}", "--set", "data.format=auto",
        "--set", "training.max_steps=4",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    started = of_type(read_events(run_dir), ev.RUN_STARTED)[0]
    data_info = {k: started["data"][k] for k in ("path", "source", "rows", "format")}
    # The demo holds 5% out for the eval loss: 4 of the 64 rows (rounded up, as datasets does).
    assert data_info == {"path": str(data), "source": "file", "rows": 60, "format": "prompt_completion"}
    assert started["data"]["eval_rows"] == 4
    assert started["data"]["worst_batch_tokens"] == 8 * started["data"]["longest_tokens"]
    assert len(of_type(read_events(run_dir), ev.STEP)) == 4


def test_lr_too_high_sample_really_diverges(tmp_path: Path) -> None:
    """The sample the spike detector is shown on: the loss falls, then jumps well above its low."""
    run_dir = tmp_path / "run"
    result = loratop("run", "sample_configs/tiny-lr-too-high.yaml", "--no-tui", "--set", f"output_dir={run_dir}")
    assert result.returncode == 0, result.stdout + result.stderr
    losses = [s["loss"] for s in of_type(read_events(run_dir), ev.STEP)]
    low = min(losses[:60])
    assert losses[0] - low > 0.5, "it must first learn"
    assert max(losses[60:]) - low > 0.5, f"no divergence: low {low:.2f}, later max {max(losses[60:]):.2f}"
    spikes = of_type(read_events(run_dir), ev.SPIKE)
    assert spikes, "the detector must flag the divergence"
    assert any(s["kind"] == "loss_spike" and 55 <= s["step"] <= 120 for s in spikes)
    story = readme_examples.lr_story(read_events(run_dir))
    told = readme_examples.readme_block("lr-too-high")
    assert readme_examples.spike_shape(story) == readme_examples.spike_shape(told), (
        f"README.md tells another story than this run: rerun scripts/readme_examples.py --write\n{story}"
    )
    assert "SPIKE" in result.stdout, "headless mode prints spikes"


def test_gpu_check_script_runs_its_cpu_safe_parts(tmp_path: Path) -> None:
    """scripts/gpu_check.py end to end on CPU: both throughput arms, the memory run, a verdict."""
    result = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--steps", "3", "--pairs", "1", "--pair-steps", "3",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "NVML: no_nvidia_gpu" in out and "run status: completed" in out
    assert '"spill_method": "n/a"' in out and "OOM risk at step -: n/a" in out
    assert "pair 1/1 loratop:" in out and "pair 1/1 bare   :" in out
    # Honest verdicts on CPU: n/a with the reason, never a PASS for a GPU criterion.
    for name in ("throughput", "nvml-vs-torch", "spills-exact", "oom-risk-rises", "oom-post-mortem"):
        assert f"CHECK {name}: n/a" in out, out[-3000:]
    assert "CPU rehearsal, not a measurement" in out and "5 of 5 checks passed or n/a" in out
    # Both throughput arms are real runs: the loratop arm wrote events, the bare one only setup logs.
    loratop_events = read_events(tmp_path / "throughput-0-loratop")
    bare_events = read_events(tmp_path / "throughput-0-bare")
    assert of_type(loratop_events, ev.STEP) and not of_type(bare_events, ev.STEP)


@pytest.mark.parametrize(
    ("action", "severity", "stops", "saves"),
    [("stop", "severe", True, True), ("checkpoint", "fatal", False, True), ("stop", "warn", False, False),
     ("warn", "fatal", False, False)],
)  # fmt: skip
def test_on_spike_acts_on_severe_spikes_only(
    tmp_path: Path, action: str, severity: str, stops: bool, saves: bool
) -> None:
    """``monitor.on_spike``: what the trainer's spike hook does to the HF Trainer's control."""
    from transformers import TrainerControl

    from loratop.core.spikes import Spike
    from loratop.preflight.config import parse_overrides
    from loratop.trainer.event_sink import EventSink
    from loratop.trainer.train import Run

    config = load_config(DEMO_CONFIG, parse_overrides([f"monitor.on_spike={action}"]), check_files=False)
    sink = EventSink(tmp_path / "events.jsonl")
    run = Run(config, tmp_path, sink)
    control = TrainerControl()
    spike = Spike(step=7, loss=9.0, baseline=3.0, score=3.0, severity=severity, kind="loss_spike", reason="jump")  # type: ignore[arg-type]
    run.on_spike(spike, control)
    sink.close()
    assert control.should_training_stop is stops and control.should_save is saves
    assert run.stop_requested == ("spike" if stops else None)
    (event,) = of_type(read_events(tmp_path), ev.SPIKE)
    assert event["step"] == 7 and event["severity"] == severity
    assert event["action"] == (action if saves else "warn")
