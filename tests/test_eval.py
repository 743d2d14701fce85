"""The held-out loss (issue 15): eval events on a schedule, overfitting alerts, early stopping
with the best adapter kept, and every surface that shows them. Real runs on the tiny model."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult

from loratop.cli.headless import follow_launched
from loratop.core import events as ev
from loratop.core.overfit import OVERFITTING, EvalTracker
from loratop.core.run_state import RunState
from loratop.core.run_summary import fold_run, run_facts
from loratop.core.runs import summarise_run
from loratop.preflight.config import ConfigError, load_config, parse_overrides
from loratop.preflight.launcher import launch
from loratop.tui.models.export import export_files
from loratop.tui.models.panels import eval_label, eval_text, header_lines, outcome_text
from loratop.widgets import LossChart
from tests.conftest import DEMO_CONFIG, add_evals, loratop, of_type, read_events

# -- the tracker (pure) --------------------------------------------------------------------


def test_the_best_evaluation_and_early_stopping() -> None:
    tracker = EvalTracker(rising=3, patience=2)
    for step, loss in [(10, 3.0), (20, 2.5), (30, 2.6)]:
        tracker.add(step, loss, 2.0)
    assert tracker.best is not None and tracker.best.step == 20 and tracker.since_best == 1
    assert tracker.should_stop() is None
    tracker.add(40, math.nan, 1.9)  # a NaN eval is never the best, and counts as no better
    assert tracker.best.step == 20 and not tracker.is_best
    assert tracker.should_stop() == "early stopping: 2 evaluations without a better eval loss than 2.5000 at step 20"
    tracker.add(50, 2.4, 1.8)
    assert tracker.is_best and tracker.should_stop() is None
    assert EvalTracker(patience=None).should_stop() is None


def test_overfitting_is_eval_rising_k_times_while_training_loss_falls_said_once() -> None:
    tracker = EvalTracker(rising=3)
    points = [(10, 2.0, 3.0), (20, 2.1, 2.8), (30, 2.2, 2.6)]
    for step, eval_loss, train in points:
        tracker.add(step, eval_loss, train)
        assert tracker.overfitting() is None  # not yet 3 rises
    tracker.add(40, 2.3, 2.4)
    message = tracker.overfitting()
    assert message == (
        "eval loss rose 3 evaluations in a row (2.0000 at step 10 → 2.3000 at step 40) while training loss "
        "fell (3.0000 → 2.4000): overfitting since step 10"
    )
    tracker.add(50, 2.4, 2.2)
    assert tracker.overfitting() is None  # said once per stretch
    tracker.add(60, 1.5, 2.1)  # a new best ends the stretch
    for step, eval_loss in [(70, 1.6), (80, 1.7), (90, 1.8)]:
        tracker.add(step, eval_loss, 2.0)
    assert tracker.overfitting() is not None  # a new stretch is said again


def test_no_overfitting_when_training_loss_rose_too_or_eval_wobbled() -> None:
    diverging = EvalTracker(rising=2)
    for step, eval_loss, train in [(1, 2.0, 2.0), (2, 2.5, 2.4), (3, 3.0, 2.9)]:
        diverging.add(step, eval_loss, train)
    assert diverging.overfitting() is None  # both rose: divergence, not overfitting
    wobble = EvalTracker(rising=2)
    for step, eval_loss, train in [(1, 2.0, 3.0), (2, 2.1, 2.8), (3, 2.05, 2.6)]:
        wobble.add(step, eval_loss, train)
    assert wobble.overfitting() is None
    no_train = EvalTracker(rising=1)
    no_train.add(1, 2.0, None)
    no_train.add(2, 2.1, None)
    assert no_train.overfitting() is None  # nothing known about training: nothing claimed


# -- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (["data.eval_split=2.5"], "data.eval_split = 2.5: a fraction below 1 (0.05) or a whole row count (200)"),
        (["data.eval_split=0.1", "data.eval_path=x.jsonl"], "set data.eval_split or data.eval_path, not both"),
        (["data.eval_split=0"], "data.eval_split = 0: must be greater than 0"),
        (["data.eval_split=3000"], "data.eval_split = 3000: holds out 3000 of 3000 rows"),
        (["data.eval_split=null", "data.eval_path=nope.jsonl"], "data.eval_path = 'nope.jsonl': file not found"),
        (["training.early_stopping_patience=0"], "training.early_stopping_patience = 0: must be greater than or equal"),
    ],
)
def test_eval_settings_are_checked_in_one_line_each(sets: list[str], words: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DEMO_CONFIG, parse_overrides([*sets, f"output_dir={tmp_path / 'r'}"]))
    assert any(words in line for line in err.value.problems), err.value.problems


def test_check_says_what_is_held_out() -> None:
    result = loratop("check", str(DEMO_CONFIG), "--set", "training.early_stopping_patience=4")
    assert result.returncode == 0, result.stderr
    assert (
        "  eval    150 rows held out (seed 42), every 50 steps and at the end; early stopping after 4 evals "
        "without a better one" in result.stdout
    )


# -- surfaces (pure) ----------------------------------------------------------------------------


def _eval(seq: int, t: float, step: int, loss: float, duration: float = 2.0) -> dict[str, Any]:
    return {"v": 1, "seq": seq, "t": t, "type": ev.EVAL, "step": step, "eval_loss": loss, "duration_s": duration,
            "eval_rows": 10, "eval_tokens": 500}  # fmt: skip


def test_state_header_and_throughput_leave_evaluation_out() -> None:
    state = RunState(Path("r"))
    state.apply({"v": 1, "seq": 0, "t": 0.0, "type": ev.RUN_STARTED, "max_steps": 100, "device": {"kind": "cpu"}})
    seq = 1
    for i in range(1, 21):
        state.apply({"v": 1, "seq": seq, "t": float(i), "type": ev.STEP, "step": i, "loss": 2.0, "tokens": 100 * i})
        seq += 1
    assert state.recent_rate() == pytest.approx((1.0, 100.0))
    state.apply(_eval(seq, 10.5, 10, 2.30, duration=5.0))  # 5 s of the 19 s were evaluating
    state.apply(_eval(seq + 1, 20.5, 20, 2.40, duration=4.0))  # outside the steps' window
    rate = state.recent_rate()
    assert rate is not None and rate[0] == pytest.approx(19 / 14)
    assert eval_text(state) == "eval 2.4000 (best 2.3000 @10)"  # the header's third line
    facts = run_facts(state, 21.0)
    assert (facts["eval_loss"], facts["best_eval_loss"], facts["best_eval_step"]) == (2.4, 2.3, 10)
    state.apply({"v": 1, "seq": 99, "t": 21.0, "type": ev.ALERT, "kind": OVERFITTING, "step": 20, "message": "m"})
    assert header_lines(state, 21.0)[0].endswith("· OVERFITTING @20")
    assert run_facts(state, 21.0)["overfitting_step"] == 20


def test_loss_chart_draws_eval_points() -> None:
    class ChartApp(App[None]):
        def compose(self) -> ComposeResult:
            yield LossChart()

    async def scenario() -> None:
        app = ChartApp()
        async with app.run_test(size=(80, 24)) as pilot:
            chart = app.query_one(LossChart)
            random.seed(3)
            steps = [float(i) for i in range(1, 301)]
            loss = [3.0 - i / 200 + 0.05 * random.random() for i in range(300)]
            chart.update(steps, loss, loss)
            await pilot.pause()
            without = chart.last_plotted_points
            chart.update(steps, loss, loss, evals=[(100.0, 2.6), (200.0, 2.4), (300.0, 2.5)])
            await pilot.pause()
            assert chart.last_plotted_points == without + 3
            assert "◆" in app.export_screenshot()  # a shape of its own: readable in monochrome

    asyncio.run(scenario())


def test_compare_shows_and_overlays_the_eval_curves(runs: Path) -> None:
    from loratop.tui.models.compare import load_compared, outcome_rows
    from loratop.widgets import CompareChart, Series

    add_evals(runs / "tiny-r16", [(20, 5.9), (40, 5.7), (60, 5.8)])
    rows = dict(outcome_rows([load_compared(runs / "tiny-r8"), load_compared(runs / "tiny-r16")]))
    assert rows["eval loss"] == ["–", "5.8000"] and rows["best eval"] == ["–", "5.7000 @40"]

    class ChartApp(App[None]):
        def compose(self) -> ComposeResult:
            yield CompareChart()

    async def scenario() -> None:
        app = ChartApp()
        async with app.run_test(size=(80, 24)) as pilot:
            chart = app.query_one(CompareChart)
            steps = [float(i) for i in range(1, 61)]
            loss = [6.0 - i / 100 for i in range(60)]
            chart.update([Series("a", steps, loss, "bright_cyan"),
                          Series("b", steps, loss, "bright_magenta", evals=[(20.0, 5.9), (40.0, 5.7)])])  # fmt: skip
            await pilot.pause()
            assert chart.plotted[1] == chart.plotted[0] + 2
            assert "◆" in app.export_screenshot()

    asyncio.run(scenario())


# -- real runs -----------------------------------------------------------------------------


@pytest.mark.slow
def test_eval_on_schedule_and_at_the_end_shows_everywhere(tmp_path: Path) -> None:
    """The demo's own split: 5% held out by the seed, eval every 15 steps and at the last (40)."""
    sets = [f"output_dir={tmp_path / 'run'}", "training.max_steps=40", "training.eval_steps=15"]
    run = launch(load_config(DEMO_CONFIG, parse_overrides(sets)), DEMO_CONFIG)
    out = io.StringIO()
    assert follow_launched(run, out=out) == 0
    printed = out.getvalue()
    assert re.search(r"eval at step 15: loss \d+\.\d{4} \(best so far; 150 rows, \d+\.\d s\)", printed)
    events = read_events(run.run_dir)
    evals = of_type(events, ev.EVAL)
    assert [e["step"] for e in evals] == [15, 30, 40]
    assert all(e["eval_rows"] == 150 and e["eval_tokens"] > 150 and e["duration_s"] > 0 for e in evals)
    assert all(math.isfinite(e["eval_loss"]) for e in evals)
    best = min(evals, key=lambda e: e["eval_loss"])
    assert (evals[-1]["best_loss"], evals[-1]["best_step"]) == (best["eval_loss"], best["step"])
    started = of_type(events, ev.RUN_STARTED)[0]
    assert started["data"]["rows"] == 2850 and started["data"]["eval_rows"] == 150
    # The eval's rows were held out by the seed: a second split with the same seed is the same.
    summary = summarise_run(run.run_dir)
    assert summary.eval_loss == evals[-1]["eval_loss"] and summary.best_eval_loss == best["eval_loss"]
    assert eval_label(summary).startswith(f"{evals[-1]['eval_loss']:.4f}")
    listing = loratop("ls", "--runs-dir", str(tmp_path), "--sort", "eval")
    assert f"{evals[-1]['eval_loss']:.4f}" in listing.stdout, listing.stdout
    written = dict((p.name, n) for p, n in export_files(run.run_dir, tmp_path / "out"))
    assert written["run-eval.csv"] == 3
    with open(tmp_path / "out" / "run-eval.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [15, 30, 40] and float(rows[0]["eval_loss"]) == evals[0]["eval_loss"]
    state = fold_run(run.run_dir)[0]
    eval_time = sum(e["duration_s"] for e in evals[:-1])  # the last runs after the last step
    steps = of_type(events, ev.STEP)
    wall = steps[-1]["t"] - steps[0]["t"]
    assert run_facts(state, None)["tokens_per_s"] == pytest.approx(
        (steps[-1]["tokens"] - steps[0]["tokens"]) / (wall - eval_time)
    )


def _odd_eval_file(path: Path) -> Path:
    """Rows unlike the training chats: training on the chats stops helping them soon."""
    rng = random.Random(0)
    words = ["".join(rng.choice("qwxzjkvbpy") for _ in range(rng.randint(3, 9))) for _ in range(400)]
    with path.open("w") as fh:
        for _ in range(20):
            turns = [{"role": role, "content": " ".join(rng.choice(words) for _ in range(30))}
                     for role in ("user", "assistant")]  # fmt: skip
            fh.write(json.dumps({"messages": turns}) + "\n")
    return path


@pytest.mark.slow
def test_early_stopping_keeps_the_best_adapter_and_overfitting_is_alerted(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    sets = [
        f"output_dir={tmp_path / 'run'}", "data.max_rows=64", "data.eval_split=null",
        f"data.eval_path={_odd_eval_file(tmp_path / 'odd.jsonl')}", "training.learning_rate=2e-2",
        "training.warmup_steps=0", "training.lr_scheduler_type=constant", "training.max_steps=400",
        "training.eval_steps=10", "training.save_steps=10", "training.early_stopping_patience=3",
        "monitor.overfit_evals=1",
    ]  # fmt: skip
    run = launch(load_config(DEMO_CONFIG, parse_overrides(sets)), DEMO_CONFIG)
    assert follow_launched(run, out=io.StringIO()) == 0  # early stopping is a normal end, not an interruption
    events = read_events(run.run_dir)
    finished = of_type(events, ev.RUN_FINISHED)[0]
    evals = of_type(events, ev.EVAL)
    best = min(evals, key=lambda e: e["eval_loss"])
    assert finished["status"] == ev.STOPPED and finished["stopped_by"] == "early stopping"
    assert finished["step"] == evals[-1]["step"] < 400
    assert [e["step"] for e in evals][-4] == best["step"]  # 3 evaluations without a better one
    assert finished["adapter_step"] == best["step"] < finished["step"]
    (final,) = [c for c in of_type(events, ev.CHECKPOINT) if c["final"]]
    assert final["step"] == best["step"]
    # The adapter saved is the best evaluation's weights, not the last step's.
    kept = load_file(str(Path(final["path"]) / "adapter_model.safetensors"))
    at_best = load_file(str(run.run_dir / f"checkpoint-{best['step']}" / "adapter_model.safetensors"))
    at_last = load_file(str(run.run_dir / f"checkpoint-{finished['step']}" / "adapter_model.safetensors"))
    assert kept.keys() == at_best.keys()
    assert all((kept[k] == at_best[k]).all() for k in kept)
    assert any(not (kept[k] == at_last[k]).all() for k in kept)
    # Eval rose while training loss fell: an alert, with where it began.
    alerts = of_type(events, ev.ALERT)
    assert alerts and alerts[0]["kind"] == OVERFITTING and "overfitting since step" in alerts[0]["message"]
    state = fold_run(run.run_dir)[0]
    text = outcome_text(state) or ""
    assert "(early stopping)" in text and f"(from step {best['step']}, the best eval)" in text
    assert any("keeping the adapter of the best evaluation" in m for m in state.messages)
    listing = loratop("ls", "--runs-dir", str(tmp_path))
    assert f"overfit@{alerts[-1]['step']}" in listing.stdout, listing.stdout  # the latest stretch


def test_the_rows_left_to_train_on_leave_the_held_out_ones_out() -> None:
    from loratop.preflight.advisor import gather_facts
    from loratop.preflight.data_files import held_out_rows, usable_rows

    assert held_out_rows(0.05, 3000) == 150 and held_out_rows(0.05, 64) == 4 and held_out_rows(200, 3000) == 200
    assert usable_rows("embedded:tool-chat", "auto", None, 0.05) == 2850
    assert usable_rows("embedded:tool-chat", "auto", 64, 0.05) == 60
    # The advisor counts epochs and small-data risks on the rows that train.
    assert gather_facts(load_config(DEMO_CONFIG, check_files=False)).dataset_rows == 2850


def test_the_knob_editor_offers_the_eval_schedule() -> None:
    from loratop.preflight.config import validate_tree
    from loratop.tui.models.knob_form import KNOBS

    assert KNOBS["training.eval_steps"].kind == "int"
    config, problems = validate_tree({"training": {"eval_steps": -5}})
    assert config is None and "must be greater than or equal to 0" in problems["training.eval_steps"]
