"""The one eval reporter of a launched run and a script's (trainer/eval_report.py): the train-loss
window, the ``eval`` event, the overfitting ``alert``, and what an evaluation leads to."""

from __future__ import annotations

import math
from pathlib import Path

from loratop.core import events as ev
from loratop.core.overfit import OVERFITTING
from loratop.trainer.eval_report import EvalReporter
from loratop.trainer.event_sink import EventSink
from tests.conftest import of_type, read_events


def test_each_evaluation_is_one_event_with_the_best_so_far(tmp_path: Path) -> None:
    sink = EventSink(tmp_path / "events.jsonl")
    evals = EvalReporter(sink, rising=3, patience=None)
    for loss in (2.0, math.nan, 1.0):  # NaN losses are left out of the window's mean
        evals.stepped(loss)
    evals.stepped(None)
    point = evals.report(10, {"eval_loss": 1.5, "eval_runtime": "0.25"}, 640, 8)
    assert point.train_loss == 1.5 and evals.is_best and evals.best == point
    evals.report(20, {"eval_runtime": 0.3}, None, None)  # no loss (a script's eval tokens are unknown)
    assert not evals.is_best and evals.best == point and evals.last_step == 20
    assert evals.tracker.points[-1].train_loss is None, "no step since the last evaluation"
    sink.close()
    first, second = of_type(read_events(tmp_path), ev.EVAL)
    assert {k: first[k] for k in ("step", "eval_loss", "eval_tokens", "eval_rows", "duration_s")} == {
        "step": 10, "eval_loss": 1.5, "eval_tokens": 640, "eval_rows": 8, "duration_s": 0.25,
    }  # fmt: skip
    assert (first["best_loss"], first["best_step"]) == (1.5, 10)
    assert second["eval_loss"] is None and second["eval_tokens"] is None and second["eval_rows"] is None
    assert (second["best_loss"], second["best_step"]) == (1.5, 10)


def test_overfitting_is_said_once_and_patience_asks_to_stop(tmp_path: Path) -> None:
    sink = EventSink(tmp_path / "events.jsonl")
    evals = EvalReporter(sink, rising=2, patience=3)
    for step, (train, held) in enumerate([(2.0, 1.0), (1.5, 1.1), (1.0, 1.2), (0.5, 1.3)], start=1):
        evals.stepped(train)
        evals.report(step, {"eval_loss": held}, None, 4)
        assert (evals.should_stop() is not None) == (step == 4), step
    sink.close()
    events = read_events(tmp_path)
    (alert,) = of_type(events, ev.ALERT)
    assert alert["kind"] == OVERFITTING and alert["step"] == 3
    order = [e["type"] for e in events if e["type"] in (ev.EVAL, ev.ALERT)]
    assert order == [ev.EVAL, ev.EVAL, ev.EVAL, ev.ALERT, ev.EVAL], "the alert follows its evaluation's event"
    assert evals.should_stop() == "early stopping: 3 evaluations without a better eval loss than 1.0000 at step 1"
