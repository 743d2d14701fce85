"""The adapter of the best evaluation, kept for an early-stopped run.

With ``training.early_stopping_patience`` set, a launched run copies the adapter's weights at
each new best evaluation to host memory (a LoRA adapter is small) and, when early stopping
ends the run past its best, puts them back before the final save: the run's adapter is its
best one, not its last.
"""

from __future__ import annotations

from typing import Any

from loratop.core.overfit import EvalPoint


class BestAdapter:
    """The best evaluation's adapter weights, on the rank that saves the adapter.

    Args:
        keeps: Whether this rank keeps them (rank 0 of a run whose adapter is not sharded:
            under FSDP the last adapter is saved, as the README says).
    """

    def __init__(self, keeps: bool) -> None:
        self.keeps = keeps
        self._weights: dict[str, Any] | None = None
        self.step: int | None = None
        """The step of the weights kept, if any."""
        self.restored_step: int | None = None
        """The step of the weights put back before the final save, if any."""

    def keep(self, model: Any, step: int) -> None:
        """Copy the trainable weights of ``model`` (the best evaluation, at ``step``) to host memory."""
        if not self.keeps:
            return
        self._weights = {
            name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad
        }
        self.step = step

    def restore(self, model: Any, last_step: int, best: EvalPoint | None) -> str | None:
        """Put the kept weights back into ``model`` unless they are the last step's. Returns
        what was done, in words (``best``: the best evaluation), or ``None`` when nothing was."""
        if self._weights is None or self.step in (None, last_step):
            return None
        import torch

        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self._weights:
                    p.copy_(self._weights[name].to(p.device))
        self.restored_step = self.step
        if best is None:
            return f"keeping the adapter of step {self.step}"
        return (
            f"keeping the adapter of the best evaluation (step {self.step}, eval loss "
            f"{best.eval_loss:.4f}), not of the last step ({last_step})"
        )

    def adapter_step(self, last_step: int) -> int:
        """The step whose weights the final adapter holds: the last, or the best evaluation's
        when they were put back."""
        return self.restored_step if self.restored_step is not None else last_step


__all__ = ["BestAdapter"]
