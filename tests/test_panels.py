"""The monitor's labels, from a plain RunState: true numbers, honest gaps."""

from __future__ import annotations

import math
from pathlib import Path

from loratop.core import events as ev
from loratop.core.run_dir import NO_REPORT
from loratop.core.run_state import LOST, UNKNOWN, RunState
from loratop.tui.models import panels


def _state(*events: dict) -> RunState:
    state = RunState(Path("runs/x"))
    for seq, event in enumerate(events):
        state.apply({"v": 1, "seq": seq, "t": event.pop("t", 1000.0 + seq), **event})
    return state


def _started(kind: str = "cpu") -> dict:
    return {
        "type": ev.RUN_STARTED,
        "run_name": "x",
        "max_steps": 100,
        "model": {"name_or_path": "tiny"},
        "device": {"kind": kind, "name": "H200" if kind == "cuda" else "x86_64"},
        "params": {
            "trainable": 32768, "total": 590464, "fraction": 32768 / 590464, "base_frozen": True,
            "groups": {"lora_A": {"tensors": 14, "params": 1}}, "unexpected": [], "lora_b_zero": True,
        },
    }  # fmt: skip


def _step(step: int, loss: float, t: float, tokens: int) -> dict:
    return {"type": ev.STEP, "step": step, "loss": loss, "lr": 1e-4, "grad_norm": 0.5, "tokens": tokens, "t": t}


def test_header_progress_eta_and_throughput() -> None:
    state = _state(
        {"type": ev.LOG, "message": "importing", "t": 990.0},
        _started(),
        *[_step(i, 2.0 - i / 100, 1000.0 + i, 100 * i) for i in range(1, 11)],
    )
    first, second = panels.header_lines(state, now=1010.0)
    assert first == "x · tiny · CPU · RUNNING"
    assert "step 10/100" in second and "loss 1.9000" in second
    assert "elapsed 20s" in second  # since the first event
    assert "ETA 1:30" in second  # 90 steps at 1 step/s
    assert "100 tok/s now" in second  # the last 20 steps' (compare says the mean: tok/s (mean))


def test_nan_loss_is_shown_as_nan_not_a_number() -> None:
    state = _state(_started(), _step(1, math.nan, 1001.0, 10))
    assert "loss NaN" in panels.header_lines(state, now=1002.0)[1]
    assert panels.fmt_loss(math.inf) == "inf" and panels.fmt_loss(None) == "–"


def test_spills_are_na_on_cpu_and_not_a_made_up_zero_on_gpu() -> None:
    assert "spills n/a (CPU run)" in panels.events_text(_state(_started("cpu")))
    gpu = panels.events_text(_state(_started("cuda")))
    assert "spills: counted from the first step" in gpu and "spills 0" not in gpu
    exact = _state(_started("cuda"), {"type": ev.PAGED_STATE, "available": True, "spill_method": "exact"})
    assert "spills: none seen (exact)" in panels.events_text(exact)
    nothing = _state(_started("cuda"), {"type": ev.PAGED_STATE, "available": True, "spill_method": "n/a"})
    assert "spills n/a (nothing paged)" in panels.events_text(nothing)
    spilled = _state(_started("cuda"), {"type": ev.SPILL, "step": 5, "bytes": 3 * 1024**3, "method": "estimated"})
    assert "spills 1  3.0 GiB (estimated)" in panels.events_text(spilled)


def test_params_panel_shows_the_audit_and_a_loud_unfrozen_base() -> None:
    assert "trainable 5.550%  32,768 / 590,464" in panels.params_text(_state(_started()))
    bad = _started()
    bad["params"].update(base_frozen=False, unexpected=["model.embed_tokens.weight"])
    assert "BASE NOT FROZEN: model.embed_tokens.weight" in panels.params_text(_state(bad))
    assert panels.params_text(_state()) == "trainable params: waiting for the model"


def test_outcomes() -> None:
    done = _state(
        _started(),
        _step(1, 1.0, 1001.0, 1),
        {"type": ev.CHECKPOINT, "step": 1, "path": "runs/x/adapter", "final": True},
        {"type": ev.RUN_FINISHED, "status": "completed", "duration_s": 75.0},
    )
    assert panels.outcome_text(done) == "completed after 1:15 at step 1 · adapter: runs/x/adapter"
    failed = _state(
        _started(),
        {"type": ev.RUN_FINISHED, "status": "failed", "duration_s": 5.0,
         "error": {"message": "ValueError: boom", "traceback": ["a", "b"]}},
    )  # fmt: skip
    assert panels.outcome_text(failed) == "failed after 5s: ValueError: boom\na\nb"
    oom = _state(
        _started(),
        {"type": ev.RUN_FINISHED, "status": "oom", "duration_s": 5.0,
         "error": {"message": "OutOfMemoryError: CUDA out of memory", "traceback": ["a"], "step": 1310,
                   "batch_tokens": 8192, "suggestions": ["halve the batch", "shorter sequences", "checkpointing", "x"]},
         },
    )  # fmt: skip
    assert panels.outcome_text(oom) == (
        "oom after 5s: OutOfMemoryError: CUDA out of memory\n"
        "at step 1310, batch of 8,192 padded tokens\n"
        "try: halve the batch\ntry: shorter sequences\ntry: checkpointing"
    )
    gone = _state(_started())
    gone.mark_lost(NO_REPORT)
    assert gone.status == LOST and "trainer gone, no report (last step 0)" in (panels.outcome_text(gone) or "")
    assert panels.outcome_text(_state(_started())) is None


def test_state_keeps_compact_arrays_and_peaks() -> None:
    memory = {"host": {"rss": 5}, "gpu_state": "ok", "gpus": [{"index": 0, "used": 7, "total": 9}]}
    state = _state(
        {"type": ev.MEMORY, **memory},
        {"type": ev.MEMORY, **{**memory, "host": {"rss": 3}, "gpus": [{"index": 0, "used": 4}]}},
    )
    assert state.peak_rss == 5 and state.peak_gpu_used == 7
    assert state.steps.typecode == "q" and state.loss.typecode == "d"


def test_status_line_counts_garbage_and_filled_gaps() -> None:
    state = _state(_started())
    state.garbage, state.filled_from_file = 2, 15
    line = panels.status_line(state)
    assert "2 garbled line(s) skipped" in line and "15 filled from events.jsonl" in line


def test_oom_risk_and_paged_labels() -> None:
    cpu = _state(
        _started("cpu"),
        {"type": ev.OOM_RISK, "level": "n/a", "reason": "CPU run: no GPU memory to run out of"},
        {"type": ev.PAGED_STATE, "available": True, "paged_bytes": 0, "paged_tensors": 0, "unpaged_bytes": 262144},
    )
    text = panels.events_text(cpu)
    assert "OOM risk n/a (CPU run)" in text
    assert "paged: nothing (CPU run)" in text
    gpu = _state(
        _started("cuda"),
        {"type": ev.OOM_RISK, "level": "watch", "predicted_peak": 10 * 1024**3, "available": 11 * 1024**3},
        {"type": ev.PAGED_STATE, "available": True, "paged_bytes": 3 * 1024**3, "paged_tensors": 448,
         "unpaged_bytes": 20 * 1024**2},
    )  # fmt: skip
    text = panels.events_text(gpu)
    assert "OOM risk WATCH: peak 10.0 GiB of 11.0 GiB" in text
    assert "paged: 3.0 GiB in 448 tensors; 20 MiB kept on GPU" in text
    assert panels.oom_text(_state(_started("cuda"))) == "OOM risk: forecast after 3 steps"


def test_spikes_listed_and_an_active_one_in_the_header() -> None:
    state = _state(
        _started(),
        *[_step(i, 2.0, 1000.0 + i, i) for i in range(1, 31)],
        {"type": ev.SPIKE, "step": 12, "loss": 9.0, "severity": "warn", "kind": "loss_spike"},
        {"type": ev.SPIKE, "step": 25, "loss": 9.0, "severity": "severe", "kind": "loss_spike"},
    )
    assert "spikes 2: step 25 (severe), 12 (warn)" in panels.events_text(state)
    assert panels.header_lines(state, now=1031.0)[0].endswith("· SPIKE SEVERE @25")
    state.apply({"v": 1, "seq": 99, "t": 1100.0, **_step(60, 2.0, 1100.0, 60)})
    assert "SPIKE" not in panels.header_lines(state, now=1100.0)[0], "an old spike leaves the header"
    assert panels.events_text(_state(_started(), _step(1, 2.0, 1001.0, 1))).startswith("spikes: none")


def test_a_killed_trainer_stops_the_clock_and_names_the_cause() -> None:
    steps = [_step(i, 2.0, 1000.0 + i, 100 * i) for i in range(1, 38)]
    ckpt = {"type": ev.CHECKPOINT, "step": 30, "path": "runs/x/checkpoint-30", "final": False, "t": 1030.5}
    state = _state(_started(), *steps[:30], ckpt, *steps[30:])
    running = panels.header_lines(state, now=1100.0)[1]
    assert "elapsed 1:40" in running and "ETA 1:03" in running  # 63 steps left at 1 step/s
    state.mark_lost("killed by SIGKILL")
    first, second = panels.header_lines(state, now=5000.0)
    assert "LOST" in first
    assert "elapsed 37s" in second, "the clock stops at the trainer's last sign of life"
    assert "ETA –" in second
    assert panels.header_lines(state, now=9000.0) == (first, second)
    outcome = (panels.outcome_text(state) or "").splitlines()
    assert outcome[0] == "killed by SIGKILL at step 37"
    assert "OOM killer" in outcome[1]
    assert outcome[2].startswith("kept: runs/x/checkpoint-30 (step 30)")
    assert not state.is_live


def test_a_trainer_this_machine_cannot_see_is_unknown_not_running() -> None:
    state = _state(_started(), _step(1, 2.0, 1001.0, 100))
    state.not_proven = "pid 4242 is recorded on host 'gpu-box-7', not this one"
    assert state.status == UNKNOWN and not state.is_live
    why = "pid 4242 is recorded on host 'gpu-box-7', not this one"
    assert panels.outcome_text(state) == f"not known to be running: {why}"
    assert "ETA –" in panels.header_lines(state, now=5000.0)[1]


def test_header_shows_an_oom_forecast_of_watch_or_danger_while_live() -> None:
    state = _state(_started("cuda"), {"type": ev.OOM_RISK, "step": 4, "level": "ok", "reason": "fits"})
    assert "OOM" not in panels.header_lines(state, now=1002.0)[0]
    state.apply({"v": 1, "seq": 9, "t": 1003.0, "type": ev.OOM_RISK, "step": 5, "level": "danger", "reason": "x"})
    assert panels.header_lines(state, now=1003.0)[0] == "x · tiny · H200 · RUNNING · OOM DANGER"
    state.apply({"v": 1, "seq": 10, "t": 1004.0, "type": ev.RUN_FINISHED, "status": "completed"})
    assert "OOM" not in panels.header_lines(state, now=1004.0)[0]  # a forecast is about a live run


def test_a_run_that_failed_while_loading_shows_dashes_not_dots_still_to_come() -> None:
    loading = _state({"type": ev.LOG, "message": "loading meta-llama/Llama-3.1-8B"})
    failed = _state(
        {"type": ev.LOG, "message": "loading meta-llama/Llama-3.1-8B"},
        {"type": ev.RUN_FINISHED, "status": "failed", "duration_s": 1.0, "error": {"message": "OSError: gone"}},
    )

    assert panels.header_lines(loading, now=1001.0)[0] == "x · … · … · STARTING"  # still to come
    assert panels.header_lines(failed, now=1001.0)[0] == "x · – · – · FAILED"  # never known
    assert panels.params_text(failed) == "trainable params – (never loaded)"
    assert panels.params_text(loading) == "trainable params: waiting for the model"
    assert panels.events_text(failed).splitlines()[:2] == ["spikes –", "spills –"]


def test_the_status_line_drops_a_checkpoint_notice_once_the_checkpoint_is_saved() -> None:
    said = [
        _started(),
        _step(92, 2.0, 1001.0, 10),
        {"type": ev.LOG, "message": "SIGUSR1: saving a checkpoint after step 92"},
    ]
    saved = {"type": ev.CHECKPOINT, "step": 92, "path": "runs/x/checkpoint-92", "final": False}

    assert panels.status_line(_state(*said)).endswith("SIGUSR1: saving a checkpoint after step 92")
    after = _state(*said, saved, _step(93, 1.9, 1002.0, 20))
    assert "SIGUSR1" not in panels.status_line(after)
    stop = _state(*said, saved, {"type": ev.LOG, "message": "SIGTERM: stopping after step 93"})
    assert panels.status_line(stop).endswith("SIGTERM: stopping after step 93"), "a later notice still shows"


def test_a_step_that_is_not_known_never_shows_as_at_none() -> None:
    from loratop.tui.models.panels import at_step

    assert at_step(5) == " @5" and at_step(0) == " @0"
    assert at_step(None) == "" and at_step("7") == "" and at_step(True) == ""


def test_eval_points_keep_step_zero_and_skip_what_is_not_a_point() -> None:
    from loratop.core.run_state import RunState

    state = RunState(Path("run"))
    for i, event in enumerate(
        [
            {"step": 0, "eval_loss": 2.5},
            {"step": 10, "eval_loss": None},
            {"eval_loss": 2.0},
            {"step": 20, "eval_loss": 1.5},
        ]
    ):
        state.apply({"v": 1, "seq": i, "t": float(i), "type": "eval", **event})
    assert state.eval_points() == [(0, 2.5), (20, 1.5)]


def test_the_home_screen_shows_every_history_column() -> None:
    from loratop.tui.models.panels import HISTORY_COLUMNS
    from loratop.tui.screens.home_screen import HOME_COLUMNS

    assert sorted(HOME_COLUMNS) == sorted(HISTORY_COLUMNS) and len(set(HOME_COLUMNS)) == len(HOME_COLUMNS)


def test_the_best_eval_is_the_one_the_trainer_named() -> None:
    """The trainer's tracker names the best (best_step); the dashboard shows that one, not its own pick."""
    from loratop.core.run_state import RunState

    state = RunState(Path("run"))
    events = [
        {"step": 10, "eval_loss": 2.0, "best_step": 10, "best_loss": 2.0},
        {"step": 20, "eval_loss": 2.0, "best_step": 20, "best_loss": 2.0},  # whichever the trainer named wins
    ]
    for i, event in enumerate(events):
        state.apply({"v": 1, "seq": i, "t": float(i), "type": "eval", **event})
    best = state.best_eval
    assert best is not None and best["step"] == 20
    state = RunState(Path("old"))
    state.apply({"v": 1, "seq": 0, "t": 0.0, "type": "eval", "step": 5, "eval_loss": 1.0})  # no best_step: scanned
    assert (state.best_eval or {}).get("step") == 5


def test_lr_and_grad_norm_each_have_their_own_text_and_history() -> None:
    """issue 26: the sparkline beside the grad norm plotted the lr; each now has its own series."""
    assert (panels.lr_text(_state()), panels.grad_norm_text(_state())) == ("lr –", "grad norm –")
    grads = [0.5, 0.7, math.nan, 6.1, 0.6]  # a NaN: an fp16 step the scaler skipped
    steps = [
        {**_step(i + 1, 2.0, 1000.0 + i, 10 * i), "lr": 1e-4 * (i + 1), "grad_norm": g} for i, g in enumerate(grads)
    ]
    state = _state(_started(), *steps)
    assert panels.lr_text(state) == "lr 5.00e-04" and panels.grad_norm_text(state) == "grad norm 0.6000"
    assert panels.spark_history(state.grad_norm) == [0.5, 0.7, 6.1, 0.6]
    assert panels.spark_history(state.lr) == [1e-4 * i for i in range(1, 6)]
    assert panels.spark_history(state.grad_norm, steps=2) == [6.1, 0.6]
    nan_last = _state(_started(), {**_step(1, 2.0, 1000.0, 10), "grad_norm": math.nan})
    assert panels.grad_norm_text(nan_last) == "grad norm NaN"
