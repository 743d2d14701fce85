"""One evaluation's report, the same for a launched run and a script's run.

:class:`EvalReporter` keeps the training losses since the last evaluation and every evaluation
so far (:class:`~loratop.core.overfit.EvalTracker`), writes the ``eval`` event and, once per
stretch, the overfitting ``alert``. It answers what an evaluation leads to — the best so far
(a launched run keeps those weights), stop early — and leaves the doing to the run.
"""

from __future__ import annotations

import math
from typing import Any

from loratop.core import events as ev
from loratop.core.overfit import OVERFITTING, EvalPoint, EvalTracker
from loratop.trainer.event_sink import Sink


def float_or_none(value: Any) -> float | None:
    """A metric as a float, or ``None`` when it is missing or not a number."""
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class EvalReporter:
    """The evaluations of one run and their events.

    Args:
        sink: Where the ``eval`` and ``alert`` events go.
        rising: Evaluations in a row the eval loss must rise (while training loss falls) for
            the overfitting alert (``monitor.overfit_evals``).
        patience: Evaluations without a new best before early stopping; ``None``: never.
    """

    def __init__(self, sink: Sink, rising: int = 3, patience: int | None = None) -> None:
        self.sink = sink
        self.tracker = EvalTracker(rising, patience)
        """Every evaluation so far: the best one, overfitting, early stopping."""
        self.last_step: int | None = None
        """The step of the latest evaluation, ``None`` before the first."""
        self._train_losses: list[float] = []

    def stepped(self, loss: float | None) -> None:
        """A training step's loss, kept for the next evaluation's overfitting check."""
        if loss is not None:
            self._train_losses.append(loss)

    def report(self, step: int, metrics: dict[str, Any], eval_tokens: int | None, eval_rows: int | None) -> EvalPoint:
        """One evaluation: its ``eval`` event, then an overfitting ``alert`` when one starts.

        Args:
            step: The step evaluated at.
            metrics: The Trainer's metrics (``eval_loss``, ``eval_runtime``).
            eval_tokens: Tokens in the eval rows, ``None`` where unknown (a script's run).
            eval_rows: Rows evaluated, ``None`` where unknown.

        Returns:
            The evaluation as recorded (a missing loss is NaN: never the best).
        """
        loss = float_or_none(metrics.get("eval_loss"))
        self.last_step = step
        losses = [x for x in self._train_losses if math.isfinite(x)]
        self._train_losses = []
        point = self.tracker.add(
            step, loss if loss is not None else math.nan, sum(losses) / len(losses) if losses else None
        )
        best = self.tracker.best
        self.sink.emit(
            ev.EVAL,
            step=step,
            eval_loss=loss,
            eval_tokens=eval_tokens,
            eval_rows=eval_rows,
            duration_s=float_or_none(metrics.get("eval_runtime")),
            best_loss=best.eval_loss if best else None,
            best_step=best.step if best else None,
        )
        message = self.tracker.overfitting()
        if message is not None:
            self.sink.emit(ev.ALERT, kind=OVERFITTING, step=step, message=message)
        return point

    @property
    def best(self) -> EvalPoint | None:
        """The evaluation with the lowest eval loss so far."""
        return self.tracker.best

    @property
    def is_best(self) -> bool:
        """Whether the latest evaluation is the best so far."""
        return self.tracker.is_best

    def should_stop(self) -> str | None:
        """Why to stop early (``patience`` evaluations without a new best), else ``None``."""
        return self.tracker.should_stop()


__all__ = ["EvalReporter", "float_or_none"]
