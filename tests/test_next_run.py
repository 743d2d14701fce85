"""``loratop next``: the next run proposed from what a finished run recorded (issue 28, items 3-4).

Each run here is written through the trainer's own event sink, folded as the dashboard folds
it, and must give exactly the proposals its events support: no finding, no proposal.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from loratop.cli.main import main
from loratop.core import events as ev
from loratop.core.run_summary import fold_run
from loratop.preflight.config import RunConfig, dump_config, load_config
from loratop.preflight.next_run import EARLY_STOP, OOM, OVERFIT, SPIKES, SPILLS, STARVED, NextRun, next_run
from loratop.trainer.event_sink import EventSink

GIB = 1024**3
Emit = Callable[[EventSink, float], None]


def make_run(
    root: Path,
    name: str = "run",
    *,
    knobs: dict[str, Any] | None = None,
    steps: int = 40,
    lr: Callable[[int], float] | None = None,
    loss: Callable[[int], float] | None = None,
    during: dict[int, Emit] | None = None,
    finish: dict[str, Any] | None = None,
) -> Path:
    """A finished run folder: ``config.yaml`` (the demo's knobs, then ``knobs``), and ``events.jsonl``
    written by the trainer's sink — ``run_started``, a ``step`` a second, ``during[step]``'s own
    events after that step, then ``run_finished`` (``finish``; by default completed)."""
    tree: dict[str, Any] = {"training": {"learning_rate": 2e-3, "max_steps": steps, "warmup_steps": 0.0}}
    for path, value in (knobs or {}).items():
        section, key = path.split(".")
        tree.setdefault(section, {})[key] = value
    config = RunConfig.model_validate(tree)
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config.output_dir = str(run_dir)
    (run_dir / "config.yaml").write_text(dump_config(config))
    sink = EventSink(run_dir / "events.jsonl")
    t = 1_000.0
    sink.emit(ev.RUN_STARTED, at=t, run_name=name, max_steps=steps, config=config.model_dump(mode="json"),
              model={"name_or_path": "tiny"}, device={"kind": "cpu"})  # fmt: skip
    for step in range(1, steps + 1):
        t += 1.0
        rate = lr(step) if lr else config.training.learning_rate
        sink.emit(ev.STEP, at=t, step=step, loss=loss(step) if loss else 2.0, lr=rate, grad_norm=0.5, tokens=100 * step)
        if during and step in during:
            during[step](sink, t)
    sink.emit(ev.RUN_FINISHED, at=t + 1, **{"status": "completed", "step": steps, **(finish or {})})
    sink.close()
    (run_dir / "status.json").write_text(json.dumps({"state": "finished", "status": (finish or {}).get("status")}))
    return run_dir


def plan_of(run_dir: Path) -> NextRun:
    state, _ = fold_run(run_dir)
    return next_run(state, yaml.safe_load((run_dir / "config.yaml").read_text()))


def changes(plan: NextRun) -> list[tuple[str, str, dict[str, tuple[Any, Any]]]]:
    """Each proposal as (finding, knob, every knob it sets with old and new): what a test pins."""
    return [
        (p.finding, p.knob, {p.knob: (p.old, p.new), **{c.knob: (c.old, c.new) for c in p.also}})
        for p in plan.proposals
    ]


def spike(step: int, severity: str, kind: str = "loss_spike", loss: float = 9.0) -> Emit:
    def emit(sink: EventSink, t: float) -> None:
        sink.emit(ev.SPIKE, at=t, step=step, loss=loss, baseline=2.0, score=4.5, severity=severity, kind=kind,
                  reason="loss 4.5x its recent level", grad_norm=3.0, action="warn")  # fmt: skip

    return emit


def oom_finish(step: int, tokens: int | None = 1200) -> dict[str, Any]:
    """A run_finished as the trainer writes it after an OOM, with its post-mortem."""
    error = {"message": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "traceback": [],
             "step": step, "batch_tokens": tokens, "last_memory": None, "suggestions": []}  # fmt: skip
    return {"status": ev.OOM, "step": step, "error": error}


def evals(points: list[tuple[int, float]], alert_at: int | None = None) -> dict[int, Emit]:
    """``eval`` events (and an overfitting alert at ``alert_at``) as the trainer writes them."""
    best: tuple[int, float] | None = None
    out: dict[int, Emit] = {}
    for step, value in points:
        best = (step, value) if best is None or value < best[1] else best

        def emit(sink: EventSink, t: float, step: int = step, value: float = value, best: Any = best) -> None:
            sink.emit(ev.EVAL, at=t, step=step, eval_loss=value, eval_rows=20, best_loss=best[1], best_step=best[0])
            if step == alert_at:
                sink.emit(ev.ALERT, at=t, kind="overfitting", step=step,
                          message=f"eval loss rose 2 evaluations in a row (… at step {step}) while training loss "
                                  f"fell (2.0 → 1.5): overfitting since step {points[0][0]}")  # fmt: skip

        out[step] = emit
    return out


def starved(step: int, knobs: list[str], busy: float = 12.0) -> Emit:
    def emit(sink: EventSink, t: float) -> None:
        sink.emit(ev.ALERT, at=t, kind="gpu_starved", step=step, busy_pct=busy, knobs=knobs,
                  message=f"GPU busy {busy:.0f}% over the last 60 s while training")  # fmt: skip

    return emit


def spills(step: int, count: int) -> Emit:
    def emit(sink: EventSink, t: float) -> None:
        for i in range(count):
            sink.emit(ev.SPILL, at=t, step=step, bytes=64 << 20, refill_bytes=None, records=3, start_ns=i,
                      end_ns=i + 1, method="exact", total_events=i + 1, total_bytes=(i + 1) * (64 << 20))  # fmt: skip

    return emit


# -- each finding → exactly its proposal ----------------------------------------------------------


def test_a_clean_run_and_warn_spikes_propose_nothing(tmp_path: Path) -> None:
    run = make_run(tmp_path, during={20: spike(20, "warn"), 30: spike(30, "warn", "grad_norm_spike")})
    plan = plan_of(run)
    assert plan.proposals == [] and plan.notes == []
    assert plan.lines() == ["no proposal: nothing in this run's record calls for a change"]


def test_an_oom_halves_the_micro_batch_and_doubles_accumulation(tmp_path: Path) -> None:
    knobs = {"training.per_device_train_batch_size": 8, "training.gradient_accumulation_steps": 2}
    plan = plan_of(make_run(tmp_path, knobs=knobs, steps=12, finish=oom_finish(12)))
    assert changes(plan) == [
        (
            OOM,
            "training.per_device_train_batch_size",
            {"training.per_device_train_batch_size": (8, 4), "training.gradient_accumulation_steps": (2, 4)},
        )
    ]
    assert "oom at step 12" in plan.proposals[0].evidence and "1,200 padded tokens" in plan.proposals[0].evidence
    assert "effective batch stays" in plan.proposals[0].reason


def test_an_oom_at_micro_batch_1_shortens_the_rows_to_half_the_batch_that_ran_out(tmp_path: Path) -> None:
    knobs = {"training.per_device_train_batch_size": 1, "training.max_seq_length": 2048}
    plan = plan_of(make_run(tmp_path, knobs=knobs, steps=5, finish=oom_finish(5, tokens=1200)))
    assert changes(plan) == [(OOM, "training.max_seq_length", {"training.max_seq_length": (2048, 600)})]


def test_an_oom_with_nothing_left_to_turn_is_a_note_not_a_proposal(tmp_path: Path) -> None:
    knobs = {"training.per_device_train_batch_size": 1, "training.max_seq_length": 8}
    plan = plan_of(make_run(tmp_path, knobs=knobs, steps=5, finish=oom_finish(5, tokens=8)))
    assert plan.proposals == []
    assert len(plan.notes) == 1 and "expandable_segments" in plan.notes[0] and "no config knob" in plan.notes[0]
    assert plan.lines()[0].startswith("no proposal")


def test_a_severe_spike_at_the_peak_rate_halves_it(tmp_path: Path) -> None:
    plan = plan_of(make_run(tmp_path, during={25: spike(25, "severe"), 30: spike(30, "fatal", "non_finite")}))
    assert changes(plan) == [(SPIKES, "training.learning_rate", {"training.learning_rate": (2e-3, 1e-3)})]
    evidence = plan.proposals[0].evidence
    assert "step 25" in evidence and "lr 2e-3" in evidence and "2 severe/fatal (1 fatal)" in evidence


def test_a_spike_during_warmup_halves_the_rate_it_broke_at(tmp_path: Path) -> None:
    """The rate recorded at the spike (5e-4, still warming up) is what broke it: the new peak is half of that."""
    plan = plan_of(
        make_run(
            tmp_path,
            knobs={"training.warmup_steps": 40},
            steps=60,
            lr=lambda step: 2e-3 * min(1.0, step / 40),
            during={10: spike(10, "severe")},
        )
    )
    assert changes(plan) == [(SPIKES, "training.learning_rate", {"training.learning_rate": (2e-3, 2.5e-4)})]


def test_an_early_spike_at_the_full_rate_without_warmup_adds_warmup(tmp_path: Path) -> None:
    plan = plan_of(make_run(tmp_path, during={3: spike(3, "severe")}))
    assert changes(plan) == [(SPIKES, "training.warmup_steps", {"training.warmup_steps": (0.0, 10.0)})]


def test_overfitting_adds_dropout_then_fewer_steps_once_dropout_is_high(tmp_path: Path) -> None:
    points = [(10, 2.0), (20, 1.8), (30, 1.9), (40, 2.1)]
    low = plan_of(make_run(tmp_path, "low", during=evals(points, alert_at=40)))
    assert changes(low) == [(OVERFIT, "lora.lora_dropout", {"lora.lora_dropout": (0.0, 0.05)})]
    assert "overfitting since step 10" in low.proposals[0].evidence
    high = plan_of(make_run(tmp_path, "high", knobs={"lora.lora_dropout": 0.1}, during=evals(points, alert_at=40)))
    assert changes(high) == [(OVERFIT, "training.max_steps", {"training.max_steps": (40, 20)})]


def test_early_stopping_ends_the_next_run_at_the_best_evaluation(tmp_path: Path) -> None:
    points = [(10, 2.0), (20, 1.8), (30, 1.9), (40, 2.1)]
    finish = {"status": ev.STOPPED, "stopped_by": "early stopping", "adapter_step": 20, "step": 40}
    plan = plan_of(make_run(tmp_path, steps=100, during=evals(points), finish=finish))
    assert changes(plan) == [(EARLY_STOP, "training.max_steps", {"training.max_steps": (100, 20)})]
    assert "best eval loss 1.8000 at step 20" in plan.proposals[0].evidence


def test_a_starved_gpu_takes_the_first_knob_the_trainer_named(tmp_path: Path) -> None:
    named = [
        "training.dataloader_num_workers: 2",
        "training.pad_to_multiple_of: 64 (or training.group_by_length: true)",
    ]
    plan = plan_of(make_run(tmp_path, during={30: starved(30, named)}))
    assert changes(plan) == [(STARVED, "training.dataloader_num_workers", {"training.dataloader_num_workers": (0, 2)})]
    assert "GPU busy 12%" in plan.proposals[0].evidence


def test_a_knob_the_schema_refuses_is_a_note_never_a_proposal(tmp_path: Path) -> None:
    """pad_to_multiple_of 64 is above this config's max_seq_length 32: the schema refuses it."""
    run = make_run(
        tmp_path, knobs={"training.max_seq_length": 32}, during={30: starved(30, ["training.pad_to_multiple_of: 64"])}
    )
    plan = plan_of(run)
    assert plan.proposals == []
    assert len(plan.notes) == 1 and "refused by the schema" in plan.notes[0]


def test_spills_turn_on_gradient_checkpointing(tmp_path: Path) -> None:
    plan = plan_of(make_run(tmp_path, knobs={"training.gradient_checkpointing": False}, during={12: spills(12, 3)}))
    assert changes(plan) == [
        (SPILLS, "training.gradient_checkpointing", {"training.gradient_checkpointing": (False, True)})
    ]
    assert plan.proposals[0].evidence == "3 spill events (exact), 201.3 MB moved to host RAM, the first at step 12"


def test_two_findings_on_one_knob_give_one_proposal_the_higher_ranked(tmp_path: Path) -> None:
    """An OOM halves the micro-batch; spills (checkpointing already on) want it halved too, and the
    starved GPU's check named a larger one: the OOM's change alone is proposed, and the notes say so."""
    knobs = {"training.per_device_train_batch_size": 8}
    during = {5: spills(5, 2), 8: starved(8, ["training.per_device_train_batch_size: 16"])}
    plan = plan_of(make_run(tmp_path, knobs=knobs, steps=10, during=during, finish=oom_finish(10)))
    assert [(p.finding, p.knob) for p in plan.proposals] == [(OOM, "training.per_device_train_batch_size")]
    assert len(plan.notes) == 2
    assert all("keeps the change for the OOM, which ranks higher" in note for note in plan.notes)


def test_a_finding_whose_knob_a_higher_one_took_proposes_its_next_named_knob(tmp_path: Path) -> None:
    """The starved GPU's check named a larger micro-batch, then more loader workers; the OOM halves
    the micro-batch: the starved GPU gets the workers, and a note says why not the batch."""
    knobs = {"training.per_device_train_batch_size": 8, "training.dataloader_num_workers": 0}
    named = ["training.per_device_train_batch_size: 16", "training.dataloader_num_workers: 4"]
    during = {8: starved(8, named)}
    plan = plan_of(make_run(tmp_path, knobs=knobs, steps=10, during=during, finish=oom_finish(10)))
    assert [(p.finding, p.knob, p.new) for p in plan.proposals] == [
        (OOM, "training.per_device_train_batch_size", 4),
        (STARVED, "training.dataloader_num_workers", 4),
    ]
    assert len(plan.notes) == 1 and "keeps the change for the OOM, which ranks higher" in plan.notes[0]
    assert "training.per_device_train_batch_size" in plan.notes[0] and "the starved GPU" in plan.notes[0]


def test_findings_are_ranked_crash_then_divergence_then_overfitting_then_speed(tmp_path: Path) -> None:
    knobs = {"training.per_device_train_batch_size": 4, "training.gradient_checkpointing": False}
    points = [(10, 2.0), (20, 1.8), (30, 1.9), (35, 2.1)]
    during = {**evals(points, alert_at=35), 25: spike(25, "severe"), 36: starved(36, ["training.sdpa_backend: flash"])}
    plan = plan_of(make_run(tmp_path, knobs=knobs, steps=38, during=during, finish=oom_finish(38)))
    assert [(p.rank, p.finding, p.knob, p.new) for p in plan.proposals] == [
        (1, OOM, "training.per_device_train_batch_size", 2),
        (2, SPIKES, "training.learning_rate", 1e-3),
        (3, OVERFIT, "lora.lora_dropout", 0.05),
        (4, STARVED, "training.sdpa_backend", "flash"),
    ]
    assert plan.changes == {
        "training.per_device_train_batch_size": 2,
        "training.gradient_accumulation_steps": 2,
        "training.learning_rate": 1e-3,
        "lora.lora_dropout": 0.05,
        "training.sdpa_backend": "flash",
    }
    assert all(len(line) <= 80 for line in plan.lines())


# -- the command -----------------------------------------------------------------------------------


def test_cli_next_prints_the_proposals_and_writes_a_config_check_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    run = make_run(runs, "r1", during={25: spike(25, "severe")})
    assert main(["next", "--runs-dir", str(runs)]) == 0  # the latest run
    out = capsys.readouterr().out
    assert "1. training.learning_rate: 2e-3 → 1e-3" in out and "evidence: spike at step 25" in out
    assert main(["next", "r1", "--runs-dir", str(runs), "--write", "next.yaml"]) == 0
    written = tmp_path / "next.yaml"
    saved = yaml.safe_load(written.read_text())
    assert saved["parent"] == str(run.resolve()) and saved["output_dir"] is None
    assert saved["training"]["learning_rate"] == 1e-3
    assert load_config(written).training.learning_rate == 1e-3  # what check loads
    capsys.readouterr()
    assert main(["check", str(written)]) == 0
    assert main(["next", "r1", "--runs-dir", str(runs), "--write", "next.yaml"]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_cli_next_refuses_a_live_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import live_status

    run = make_run(tmp_path, "live", during={25: spike(25, "severe")})
    lines = (run / "events.jsonl").read_text().splitlines()
    (run / "events.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # no run_finished yet
    (run / "status.json").write_text(json.dumps(live_status(state="running")))
    assert main(["next", str(run)]) == 2
    assert "still training" in capsys.readouterr().err


# -- the dashboard -----------------------------------------------------------------------------------


def test_n_in_a_finished_runs_monitor_opens_the_editor_with_the_proposals_applied_unsaved(tmp_path: Path) -> None:
    from textual.widgets import Input, Static

    from loratop.tui.app import LoratopApp
    from loratop.tui.screens.knob_editor_screen import KnobEditor
    from loratop.tui.screens.monitor_screen import MonitorScreen
    from tests.conftest import screen_text, until

    knobs = {"training.per_device_train_batch_size": 8, "training.gradient_accumulation_steps": 2}
    run = make_run(tmp_path, "finished", knobs=knobs, during={25: spike(25, "severe")}, finish=oom_finish(40))
    app = LoratopApp(run, runs_root=tmp_path)

    async def drive() -> None:
        async with app.run_test(size=(160, 40)) as pilot:
            monitor = app.screen
            assert isinstance(monitor, MonitorScreen)
            await until(pilot, lambda: monitor.state.finished is not None, 10, "the replay")
            await until(pilot, lambda: "n next" in screen_text(app).splitlines()[-1], 5, "n next in the footer")
            await pilot.press("n")
            await until(pilot, lambda: isinstance(app.screen, KnobEditor), 5, "the editor")
            editor = app.screen
            assert isinstance(editor, KnobEditor)
            field = {p: editor.query_one(f"#knob-{p.replace('.', '-')}", Input).value for p in knobs}
            field["training.learning_rate"] = editor.query_one("#knob-training-learning_rate", Input).value
            assert field == {
                "training.per_device_train_batch_size": "4",
                "training.gradient_accumulation_steps": "4",
                "training.learning_rate": "1e-3",
            }
            listed = str(editor.query_one("#next-run", Static).render())
            assert "1. training.per_device_train_batch_size: 8 → 4" in listed
            assert "evidence: run_finished: oom" in listed
            assert "2. training.learning_rate: 2e-3 → 1e-3" in listed and "evidence: spike at step 25" in listed
            assert editor.saved_path is None  # unsaved: the user confirms (ctrl+s, ctrl+r)
            assert editor.config is not None and editor.config.training.learning_rate == 1e-3
            assert editor.parent_ref == str(run.resolve())

    asyncio.run(drive())


def test_n_in_a_live_runs_monitor_is_refused(tmp_path: Path) -> None:
    from loratop.tui.app import LoratopApp
    from loratop.tui.screens.monitor_screen import MonitorScreen
    from tests.conftest import live_status, until

    run = make_run(tmp_path, "live", during={25: spike(25, "severe")})
    lines = (run / "events.jsonl").read_text().splitlines()
    (run / "events.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # no run_finished: it trains
    (run / "status.json").write_text(json.dumps(live_status(state="running")))
    app = LoratopApp(run, runs_root=tmp_path)

    async def drive() -> None:
        async with app.run_test(size=(100, 40)) as pilot:
            monitor = app.screen
            assert isinstance(monitor, MonitorScreen)
            await until(pilot, lambda: monitor.state.last_step == 40, 10, "the replay")
            assert monitor.state.is_live
            await pilot.press("n")
            said = lambda: any("still training" in str(n.message) for n in app._notifications)  # noqa: E731
            await until(pilot, said, 10, "the toast")
            assert app.screen is monitor

    asyncio.run(drive())


def test_n_on_a_run_with_nothing_to_change_says_so_and_stays(tmp_path: Path) -> None:
    from loratop.tui.app import LoratopApp
    from loratop.tui.screens.monitor_screen import MonitorScreen
    from tests.conftest import until

    app = LoratopApp(make_run(tmp_path, "clean", during={20: spike(20, "warn")}), runs_root=tmp_path)

    async def drive() -> None:
        async with app.run_test(size=(100, 40)) as pilot:
            monitor = app.screen
            assert isinstance(monitor, MonitorScreen)
            await until(pilot, lambda: monitor.state.finished is not None, 10, "the replay")
            await pilot.press("n")
            said = lambda: any("no proposal: nothing in this run" in str(n.message) for n in app._notifications)  # noqa: E731
            await until(pilot, said, 10, "the toast")
            assert app.screen is monitor

    asyncio.run(drive())


def test_next_edit_opens_the_editor_with_the_proposals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the state the CLI read: the App reads no events again (on its UI thread, before the
    first frame)."""
    from textual.widgets import Input

    from loratop.core.run_summary import fold_run
    from loratop.tui.app import LoratopApp
    from loratop.tui.screens.knob_editor_screen import KnobEditor
    from tests.conftest import until

    run = make_run(tmp_path, "r1", during={3: spike(3, "severe")})
    app = LoratopApp(None, runs_root=tmp_path, edit=run, next_run=fold_run(run)[0])
    monkeypatch.setattr("loratop.core.run_summary.fold_run", lambda *a, **k: pytest.fail("read again"))

    async def drive() -> None:
        async with app.run_test(size=(100, 40)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, KnobEditor), 5, "the editor")
            assert app.screen.query_one("#knob-training-warmup_steps", Input).value == "10"

    asyncio.run(drive())


@pytest.mark.slow
def test_next_on_a_real_demo_run_end_to_end(tmp_path: Path) -> None:
    """The real trainer on the demo config, a few steps; then ``loratop next`` on it as a user types it:
    a healthy run records nothing that calls for a change, and ``--write`` gives a config for a rerun
    that ``loratop check`` accepts, its parent the run."""
    from tests.conftest import DEMO_CONFIG, loratop

    run_dir = tmp_path / "runs" / "demo-few"
    steps = ("--set", "training.max_steps=4", "--set", "training.eval_steps=0", "--set", f"output_dir={run_dir}")
    ran = loratop("run", str(DEMO_CONFIG), "--no-tui", *steps)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    shown = loratop("next", "--runs-dir", str(tmp_path / "runs"), "--write", str(tmp_path / "next.yaml"))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[:2] == [
        "next run after demo-few (completed, step 4):",
        "no proposal: nothing in this run's record calls for a change",
    ]
    saved = yaml.safe_load((tmp_path / "next.yaml").read_text())
    assert saved["parent"] == str(run_dir.resolve()) and saved["output_dir"] is None
    assert saved["training"] == yaml.safe_load((run_dir / "config.yaml").read_text())["training"]
    checked = loratop("check", str(tmp_path / "next.yaml"), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"ok: {tmp_path / 'next.yaml'}")
