"""Held-out loss over a run: the best evaluation, overfitting as it starts, early stopping (pure).

The trainer feeds :class:`EvalTracker` each evaluation with the mean training loss since the
one before. Overfitting is the eval loss rising ``k`` evaluations in a row while the training
loss fell over the same stretch: the adapter is learning the training rows, not the task. It is
said once per stretch (again only after a new best). Early stopping counts evaluations since
the best one. Standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

OVERFITTING = "overfitting"
"""The ``kind`` of the alert event."""


@dataclass(frozen=True)
class EvalPoint:
    step: int
    eval_loss: float
    train_loss: float | None
    """Mean training loss over the steps since the previous evaluation (``None``: no step)."""


@dataclass
class EvalTracker:
    """Evaluations so far, the best one, and what they call for.

    Args:
        rising: ``k``: evaluations in a row the eval loss must rise (while training loss
            falls) to raise an overfitting alert.
        patience: Evaluations without a new best before early stopping; ``None``: never.
    """

    rising: int = 3
    patience: int | None = None
    points: list[EvalPoint] = field(default_factory=list)
    best: EvalPoint | None = None
    since_best: int = 0
    """Evaluations since the best one (0 when the latest is the best)."""
    alerted: bool = False
    """An overfitting alert was raised since the last new best."""

    def add(self, step: int, eval_loss: float, train_loss: float | None) -> EvalPoint:
        """Record one evaluation. Returns it."""
        point = EvalPoint(step, eval_loss, train_loss)
        self.points.append(point)
        if math.isfinite(eval_loss) and (self.best is None or eval_loss < self.best.eval_loss):
            self.best, self.since_best, self.alerted = point, 0, False
        else:
            self.since_best += 1
        return point

    @property
    def is_best(self) -> bool:
        """Whether the latest evaluation is the best so far."""
        return bool(self.points) and self.best is self.points[-1]

    def overfitting(self) -> str | None:
        """The alert's message when overfitting has just been seen (once per stretch), else ``None``."""
        k = self.rising
        if self.alerted or len(self.points) < k + 1:
            return None
        stretch = self.points[-(k + 1) :]
        evals = [p.eval_loss for p in stretch]
        if not all(math.isfinite(v) for v in evals) or not all(b > a for a, b in zip(evals, evals[1:], strict=False)):
            return None
        first, last = stretch[0].train_loss, stretch[-1].train_loss
        if first is None or last is None or not (math.isfinite(first) and math.isfinite(last)) or last >= first:
            return None
        self.alerted = True
        return (
            f"eval loss rose {k} evaluations in a row ({evals[0]:.4f} at step {stretch[0].step} → "
            f"{evals[-1]:.4f} at step {stretch[-1].step}) while training loss fell ({first:.4f} → {last:.4f}): "
            f"overfitting since step {stretch[0].step}"
        )

    def should_stop(self) -> str | None:
        """Why to stop early (``patience`` evaluations without a new best), else ``None``."""
        if self.patience is None or self.best is None or self.since_best < self.patience:
            return None
        return (
            f"early stopping: {self.since_best} evaluations without a better eval loss than "
            f"{self.best.eval_loss:.4f} at step {self.best.step}"
        )


__all__ = ["OVERFITTING", "EvalPoint", "EvalTracker"]
