"""The frozen-base audit, run once the adapters are attached and before any step.

It counts parameters the way peft's ``get_nb_trainable_parameters()`` does (a packed
4-bit weight counts at its full size, not as the bytes it occupies), groups what
trains, and catches the classic QLoRA production bug: a base weight left with
``requires_grad`` (say after ``base_model.requires_grad_(True)``), which trains and
saves far more than the adapter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ParameterAudit:
    """What trains and what is frozen."""

    trainable: int
    """Trainable parameters (peft's count)."""
    total: int
    """All parameters, 4-bit weights at full size (peft's count)."""
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per group (``lora_A``, ``lora_B``, ``bias``, ``other``): tensors and parameters."""
    unexpected: list[str] = field(default_factory=list)
    """Trainable tensors that are not adapters (nor biases the config asked to train)."""
    lora_b_nonzero: list[str] = field(default_factory=list)
    """``lora_B`` tensors that do not start at zero (the adapter would shift the base at step 0)."""

    @property
    def fraction(self) -> float:
        """Trainable / total."""
        return self.trainable / self.total if self.total else 0.0

    def as_event(self) -> dict[str, Any]:
        """The audit as ``run_started`` fields."""
        data = asdict(self)
        data["fraction"] = self.fraction
        data["base_frozen"] = not self.unexpected
        data["lora_b_zero"] = not self.lora_b_nonzero
        return data

    def refusal(self, limit: int = 8) -> str:
        """The message given when the run refuses to train."""
        names = ", ".join(self.unexpected[:limit])
        more = f" and {len(self.unexpected) - limit} more" if len(self.unexpected) > limit else ""
        return (
            f"refusing to train: {len(self.unexpected)} base (non-adapter) tensor(s) require grad: {names}{more}. "
            "They would be trained and saved with the adapter, which is not QLoRA and costs memory. "
            "Freeze them, or set lora.allow_trainable_base: true if that is what you want."
        )


def group_of(name: str, train_biases: bool) -> str:
    """Which group a trainable parameter's name belongs to."""
    if "lora_A" in name or "lora_embedding_A" in name:
        return "lora_A"
    if "lora_B" in name or "lora_embedding_B" in name:
        return "lora_B"
    if "lora_magnitude_vector" in name:
        return "lora_magnitude"
    if train_biases and name.endswith(".bias"):
        return "bias"
    return "other"


def audit_parameters(model: Any, train_biases: bool = False) -> ParameterAudit:
    """Audit a peft model (one with ``get_nb_trainable_parameters``).

    Args:
        model: The ``PeftModel`` about to be trained.
        train_biases: Whether the config's ``lora.bias`` asks biases to train.
    """
    trainable, total = model.get_nb_trainable_parameters()
    audit = ParameterAudit(trainable=int(trainable), total=int(total))
    for name, param in model.named_parameters():
        if "lora_B" in name and not bool((param == 0).all()):
            audit.lora_b_nonzero.append(name)
        if not param.requires_grad:
            continue
        group = group_of(name, train_biases)
        slot = audit.groups.setdefault(group, {"tensors": 0, "params": 0})
        slot["tensors"] += 1
        slot["params"] += int(param.numel())
        if group == "other":
            audit.unexpected.append(name)
    return audit
