"""``--no-tui``'s printer: one model of a run (issue 27, item 4).

The printer keeps no state of its own beside the :class:`RunState` every other view folds; what
it prints is chosen by one table of event types. Fed a recorded real run, its state is the
plain fold of that run's ``events.jsonl``, and its lines are what the README shows.
"""

from __future__ import annotations

import io

from loratop.cli.headless import HeadlessPrinter
from loratop.core import events as ev
from loratop.core.run_state import RunState
from tests.conftest import RECORDED_RUNS, assert_same_fold, read_events, slow_fold


def _printed(run: str) -> tuple[HeadlessPrinter, list[str]]:
    out = io.StringIO()
    printer = HeadlessPrinter(RunState(RECORDED_RUNS / run), out=out, clock=lambda: 0.0)
    for event in read_events(RECORDED_RUNS / run):
        printer.handle(event)
    return printer, out.getvalue().splitlines()


def test_the_printers_run_is_the_fold_every_other_view_reads() -> None:
    printer, _ = _printed("tiny-lr-high")

    assert_same_fold(printer.state, slow_fold(RECORDED_RUNS / "tiny-lr-high"))
    assert printer.finished is printer.state.finished is not None
    assert printer.max_steps == printer.state.started["max_steps"]
    assert printer.last_t == printer.state.last_t


def test_each_event_type_it_prints_has_one_entry_in_its_table() -> None:
    printer, lines = _printed("tiny-lr-high")
    spikes = [e for e in read_events(RECORDED_RUNS / "tiny-lr-high") if e["type"] == ev.SPIKE]

    assert set(HeadlessPrinter.SHOW) <= set(ev.EVENT_TYPES)
    assert all(callable(getattr(printer, method)) for method in HeadlessPrinter.SHOW.values())
    assert len([line for line in lines if line.startswith("SPIKE ")]) == len(spikes) > 0
    assert lines[0].startswith("[trainer] ") and any(line.startswith("run tiny-lr-high:") for line in lines)
    assert lines[-1].startswith("run completed after ") or lines[-1].startswith("run stopped")


def test_the_run_model_folds_every_event_type_of_the_protocol_through_one_table() -> None:
    """Every type the protocol knows has its fold in :class:`RunState`'s table; a type from a
    newer trainer is counted and left out, never an error."""
    from loratop.core.run_state import _FOLDS

    assert set(_FOLDS) == set(ev.EVENT_TYPES)
    state = RunState(RECORDED_RUNS / "tiny-r8")
    state.apply({"v": 1, "seq": 0, "t": 1.0, "type": "from_the_future", "x": 1})
    assert state.events_seen == 1 and state.garbage == 0 and not state.steps
