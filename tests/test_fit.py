"""``loratop fit`` (issue 28): the plan stays within its budget, the verdict picks the fastest point
that keeps the headroom, an out-of-memory error is a data point, ``--write`` writes a config
``loratop check`` accepts, no GPU is one line and exit 2, and the knob editor's fit action fills
the batch knobs.

The probe runs the real tiny model on CPU; only the GPU's memory is a fake
(``LORATOP_FIT_FAKE_MEMORY``: peak = base + per_token × tokens, an out-of-memory error above total).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from textual.widgets import Checkbox, Input, Static

from loratop.preflight.config import load_config
from loratop.preflight.config_rewrite import rewrite_config
from loratop.preflight.fit_plan import (
    FAKE_MEMORY_ENV,
    FitResult,
    Measurement,
    Point,
    between,
    candidates,
    format_result,
    parse_budget,
    parse_headroom,
    probe_order,
    run_plan,
    verdict,
)
from loratop.tui.app import LoratopApp
from loratop.tui.screens.knob_editor_screen import KnobEditor
from tests.conftest import DEMO_CONFIG, REPO, nvidia_gpu_present, screen_text, until

GB = 10**9


def _peak(point: Point, longest: int) -> int:
    """A known peak function: 2 GB + 1 MB a token, half that with checkpointing."""
    return int(2 * GB + 1e6 * point.tokens(longest) * (0.5 if point.grad_ckpt else 1.0))


def _measure(point: Point, longest: int, total: int) -> Measurement:
    tokens = point.tokens(longest)
    peak = _peak(point, longest)
    if peak > total:
        return Measurement(point, tokens, None, 0.5, oom="CUDA out of memory. Tried to allocate 2.00 GiB")
    speed = 1000.0 * tokens**0.5 * (0.6 if point.grad_ckpt else 1.0)  # checkpointing recomputes
    return Measurement(point, tokens, peak, 1.0, tokens_per_s=speed, busy_pct=80.0, step_seconds=0.3)


# -- the plan and the verdict, with plain numbers ----------------------------------------------


def test_the_recommendation_is_the_fastest_measured_point_that_keeps_the_headroom() -> None:
    points = candidates(8, 1, 512, True)  # micro-batches 1, 2, 4, 8; checkpointing on and off
    total = int(5.5 * GB)
    measured = [_measure(p, 400, total) for p in points]
    rows, best, fits, _notes = verdict(points, measured, 400, total, 8, headroom_frac=0.10)
    # Without checkpointing 8 × 400 tokens needs 5.2 GB: it ran (and ran fastest), but does not
    # keep 10% free; checkpointed, 8 × 400 keeps it but is slower than 4 × 400 without.
    assert best is not None and best.point == Point(4, 512, False) and best.accum == 2
    over = next(r for r in rows if r.point == Point(8, 512, False))
    assert not over.keeps_headroom and over.measured is not None and over.measured.tokens_per_s
    # The fit is the OOM forecast's line: it recovers the known function.
    assert fits["off"][1] == pytest.approx(1e6) and fits["on"][1] == pytest.approx(0.5e6)
    # With 40% kept free (peaks ≤ 3.3 GB): 2 × 400 without checkpointing beats 4 × 400 with it.
    _rows, best, _fits, _notes = verdict(points, measured, 400, total, 8, headroom_frac=0.40)
    assert best is not None and best.point == Point(2, 512, False) and best.accum == 4


def test_an_oom_is_a_point_above_the_limit_and_the_rest_of_the_plan_goes_on() -> None:
    points = candidates(8, 1, 512, False)
    total = int(3.9 * GB)  # 1 MB a token without checkpointing: 8 × 400 = 5.2 GB runs out of memory
    order = probe_order(points, 400, lambda p: None, None, False)
    measured, skipped = run_plan(order, 400, lambda p: _measure(p, 400, total), 1e9, points=points)
    assert skipped == []
    ooms = [m for m in measured if m.oom]
    assert [m.point for m in ooms] == [Point(8, 512, False)]
    assert measured.index(ooms[0]) < len(measured) - 1, "points after the OOM still ran"
    rows, best, _fits, _notes = verdict(points, measured, 400, total, 8)
    row = next(r for r in rows if r.point == Point(8, 512, False))
    assert row.above_oom and not row.keeps_headroom
    # 4 × 400 without checkpointing (3.6 GB) leaves < 10% free; 2 × 400 was never probed (the plan
    # bracketed at 1, 4 and 8): the fastest measured point that keeps the headroom is checkpointed.
    assert best is not None and best.point == Point(4, 512, True)
    assert Point(2, 512, False) not in [m.point for m in measured]


def test_between_picks_the_unprobed_point_inside_a_bracket() -> None:
    points = candidates(16, 1, 100, False)
    done = [_measure(Point(1, 100, False), 100, GB * 10), Measurement(Point(16, 100, False), 1600, None, 1, oom="x")]
    assert between([p for p in points if not p.grad_ckpt], done, 100) == Point(4, 100, False)


def test_the_plan_stays_within_its_budget_and_says_what_it_skipped() -> None:
    """Time is a fake clock: each point takes 3 steps of 0.01 s a token-hundred."""
    now = [0.0]

    def run(point: Point) -> Measurement:
        tokens = point.tokens(300)
        step = 0.01 * tokens / 100
        now[0] += 3 * step
        return Measurement(point, tokens, GB, 3 * step, tokens_per_s=tokens / step, step_seconds=step)

    points = candidates(32, 1, 512, True)
    order = probe_order(points, 300, lambda p: None, None, True)
    for budget in (0.05, 0.3, 1.0, 100.0):
        now[0] = 0.0
        said: list[str] = []
        measured, skipped = run_plan(order, 300, run, budget, clock=lambda: now[0], say=said.append, points=points)
        first = measured[0].seconds
        assert sum(m.seconds for m in measured) <= max(budget, first)
        assert len(measured) + len(skipped) >= len(order)
        assert all(any(p.label() in line and "skipped" in line for line in said) for p in skipped)
    now[0] = 0.0
    measured, skipped = run_plan(order, 300, run, 0.001, clock=lambda: now[0])
    assert len(measured) == 1 and skipped == order[1:], "a tiny budget: the first point, then nothing"


def test_the_result_reads_back_and_its_text_fits_80_columns() -> None:
    points = candidates(8, 1, 512, True)
    measured = [_measure(p, 400, 6 * GB) for p in points]
    rows, best, fits, notes = verdict(points, measured, 400, 6 * GB, 8)
    result = FitResult(rows, best, 6 * GB, 0.1, 8, 90.0, 12.0, 5.0, [Point(64, 512, False)], notes, "H200", False, fits)
    again = FitResult.from_dict(result.to_dict())
    assert again.recommended is not None and again.recommended.point == Point(8, 512, False)
    text = format_result(again)
    assert text == format_result(result)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "80%" in text and "skipped (budget): 64×512" in text


def test_budget_and_headroom_read_as_typed() -> None:
    assert parse_budget("90s") == 90 and parse_budget("2m") == 120 and parse_budget("45") == 45
    assert parse_headroom("10%") == pytest.approx(0.1) and parse_headroom("0.2") == pytest.approx(0.2)
    for bad in ("0s", "-1"):
        with pytest.raises(ValueError):
            parse_budget(bad)
    with pytest.raises(ValueError):
        parse_headroom("100%")


# -- the real probe on the tiny model, with the fake memory source ------------------------------

FAKE = "1e9,2e6,2.5e9"
"""1 GB + 2 MB a token, 2.5 GB total: at 128 tokens a row, 4 rows fit, 8 run out of memory."""


def _small_config(tmp_path: Path) -> Path:
    """The demo, cut short: 120 rows of at most 128 tokens (tokenising and stepping stay quick)."""
    text = rewrite_config(DEMO_CONFIG.read_text(), {"data.max_rows": 120, "training.max_seq_length": 128})
    path = tmp_path / "small.yaml"
    path.write_text(text)
    return path


def _loratop(
    *args: str, fake: str | None, hide_gpus: bool = False, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != FAKE_MEMORY_ENV}
    env["PYTHONPATH"] = str(REPO)
    if fake is not None:
        env[FAKE_MEMORY_ENV] = fake
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""  # NVML then sees no GPU, on any box
    code = "import sys; from loratop.cli.main import main; rc = main(sys.argv[1:]); "
    code += "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded', file=sys.stderr); sys.exit(rc)"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


@pytest.mark.slow
def test_fit_probes_the_real_model_counts_the_oom_and_writes_a_config_check_accepts(tmp_path: Path) -> None:
    config = _small_config(tmp_path)
    out = tmp_path / "fitted.yaml"
    done = _loratop("fit", str(config), "--budget", "120s", "--write", str(out), fake=FAKE)
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    assert "a TEST FAKE memory source" in text, "the fake is named as a fake"
    assert "probing 1×128, checkpointing on" in done.stderr, "progress while it steps"
    assert "out-of-memory errors: 0" not in text, text
    assert max(len(line) for line in text.split("\nwrote ")[0].splitlines()) <= 80, text
    oom_rows = [line.split() for line in text.splitlines() if line.rstrip().endswith("OOM")]
    assert oom_rows and all(row[0] == "8" for row in oom_rows), text
    assert "fit, checkpointing on: 0.93 GiB + 1,953.1 KiB per token" in text, "the fake's line, recovered"
    chosen = [line for line in text.splitlines() if line.startswith("▶")]
    assert len(chosen) == 1 and "n/a" in chosen[0], "GPU busy with the fake: n/a, never a number"
    assert int(chosen[0].split()[1]) <= 4, "8 rows ran out of memory: never recommended"
    written = yaml.safe_load(out.read_text())
    assert written["parent"] == str(config.resolve())
    assert written["training"]["per_device_train_batch_size"] == int(chosen[0].split()[1])
    mb, accum = written["training"]["per_device_train_batch_size"], written["training"]["gradient_accumulation_steps"]
    assert mb * accum == 8, "the effective batch is kept"
    check = _loratop("check", str(out), fake=None, hide_gpus=True, timeout=60)
    assert check.returncode == 0 and check.stdout.startswith(f"ok: {out}"), check.stderr


@pytest.mark.slow
def test_a_tiny_budget_probes_one_point_and_names_the_rest_skipped(tmp_path: Path) -> None:
    done = _loratop("fit", str(_small_config(tmp_path)), "--budget", "0.01s", fake=FAKE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "probed 1 point(s)" in done.stdout
    assert done.stdout.count("skipped (budget): ") >= 3, done.stdout


def test_no_gpu_and_no_fake_is_one_line_and_exit_2_with_nothing_loaded() -> None:
    done = _loratop("fit", str(DEMO_CONFIG), fake=None, hide_gpus=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == (
        f"loratop fit needs an NVIDIA GPU (none here); the formula's view: loratop estimate {DEMO_CONFIG}"
    )
    assert lines[1:] == ["torch not loaded"] and done.stdout == ""


@pytest.mark.slow
def test_the_editors_fit_action_fills_the_batch_knobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAKE_MEMORY_ENV, FAKE)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    app = LoratopApp(None, runs_root=tmp_path / "runs", edit=_small_config(tmp_path))

    def knob(screen: Any, path: str) -> Any:
        return screen.query_one(f"#knob-{path.replace('.', '-')}")

    async def drive() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, KnobEditor), 10, "the editor")
            screen = app.screen
            assert isinstance(knob(screen, "training.per_device_train_batch_size"), Input)
            assert knob(screen, "training.per_device_train_batch_size").value == "8"
            await until(pilot, lambda: screen_text(app).splitlines()[-1].strip() != "", 10, "the footer drawn")
            assert "^f fit" in screen_text(app).splitlines()[-1], "the footer names the key the README does"
            await pilot.press("ctrl+f")
            panel = screen.query_one("#fit-result", Static)
            await until(pilot, lambda: "loratop fit:" in str(panel.render()), 20, "progress on screen")
            await until(pilot, lambda: "filled" in str(panel.render()), 240, "the probe's table")
            text = str(panel.render())
            assert "a TEST FAKE memory source" in text and "▶" in text, text
            mb = int(knob(screen, "training.per_device_train_batch_size").value)
            accum = int(knob(screen, "training.gradient_accumulation_steps").value)
            assert mb <= 4 and mb * accum == 8
            assert isinstance(knob(screen, "training.gradient_checkpointing"), Checkbox)
            assert screen.saved_path is None, "filled, not saved: the user saves"

    asyncio.run(drive())


# -- on a GPU -----------------------------------------------------------------------------------


@pytest.mark.gpu
def test_fit_on_the_gpu_check_model_within_90_seconds(tmp_path: Path) -> None:
    """``loratop fit`` on scripts/gpu_check.py's random-init ~1B Llama: the real memory source
    (torch.cuda, NVML busy %), a recommendation, all inside 90 s (the subprocess's timeout)."""
    if not nvidia_gpu_present():
        pytest.skip("no NVIDIA driver or GPU")
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check
    spec.loader.exec_module(gpu_check)
    model = gpu_check.build_model(tmp_path / "model", 22)
    config = tmp_path / "gpu.yaml"
    changes = {"model.name_or_path": str(model), "lora.r": 64, "lora.lora_alpha": 64, "data.eval_split": None}
    config.write_text(rewrite_config(DEMO_CONFIG.read_text(), changes))
    load_config(config, check_files=False)
    done = _loratop("fit", str(config), "--budget", "45s", fake=None, timeout=90)
    print(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TEST FAKE" not in done.stdout and "recommended: per_device_train_batch_size=" in done.stdout
    chosen = next(line for line in done.stdout.splitlines() if line.startswith("▶"))
    assert "%" in chosen, "NVML's busy % on a real GPU"


def test_the_editors_fit_action_without_a_gpu_says_so_and_shows_the_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FAKE_MEMORY_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # NVML then sees no GPU, on any box
    app = LoratopApp(None, runs_root=tmp_path / "runs", edit=DEMO_CONFIG)

    async def drive() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, KnobEditor), 10, "the editor")
            screen = app.screen
            await until(pilot, lambda: getattr(screen, "_estimate", None) is not None, 10, "the estimate")
            await pilot.press("ctrl+f")
            panel = screen.query_one("#fit-result", Static)
            await until(pilot, lambda: "needs an NVIDIA GPU" in str(panel.render()), 10, "the refusal")
            text = str(panel.render())
            assert text.startswith("loratop fit needs an NVIDIA GPU (none here)")
            assert "Pre-flight memory estimate" in text, "loratop estimate's view instead"
            assert screen.query_one("#knob-training-per_device_train_batch_size", Input).value == "8"

    asyncio.run(drive())
