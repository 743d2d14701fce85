"""How busy the GPU is while a run trains: NVML's busy %, model-FLOPs utilisation, a starved GPU.

Pure (standard library only): the trainer feeds :class:`StarvedGpu` at step boundaries and
emits its alert; the dashboard, ``ls``, ``compare`` and ``export`` compute busy % and MFU from
the ``memory`` and ``step`` events with the functions here.

**GPU busy %** is NVML's utilisation: the share of the last sample period in which a kernel
ran on the GPU (not how much of the GPU it used). A run on several GPUs averages the GPUs it
trains on (torch's ``cuda:0 .. cuda:N-1``).

**MFU** (model-FLOPs utilisation) = tokens/s × FLOPs per token ÷ (peak FLOPs × GPUs). QLoRA
trains adapters on a frozen 4-bit base, but every token still costs the base's forward pass
(2 FLOPs per parameter) and the gradient of its input through every frozen layer on the way
back (another 2): 4 × parameters per token, where full fine-tuning costs 6. LoRA's own weight
gradients and attention's sequence-length term are left out (both small at these lengths),
and so is gradient checkpointing's recomputation (it is work the model did not need: MFU,
not hardware utilisation). Tokens are those the Trainer counts (``num_input_tokens_seen``).
The peak is the GPU's dense bf16 tensor-core peak from :data:`BF16_DENSE_TFLOPS`; a GPU not in
the table has no MFU ("peak unknown"), never a guess.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

BF16_DENSE_TFLOPS: tuple[tuple[str, float], ...] = (
    # Most specific names first: "L40S" before "L40" before "L4"; "H100 PCIe" before "H100".
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.5),
    ("H100", 989.4),  # SXM (NVML: "NVIDIA H100 80GB HBM3")
    ("H800", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),  # SXM and PCIe, 40 and 80 GB
    ("A800", 312.0),
    ("L40S", 362.05),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),  # AWS's A10G
    ("A10", 125.0),
)
"""Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched as
a substring of NVML's device name, first match wins."""

FLOPS_PER_PARAM_PER_TOKEN = 4
"""Forward (2) and the input gradient through the frozen base (2); see the module docstring."""

STARVED_BELOW_PCT = 30.0
"""A GPU busy less than this, on average over :data:`STARVED_WINDOW_S`, is starved."""
STARVED_WINDOW_S = 60.0
"""How long the GPU must stay under :data:`STARVED_BELOW_PCT` while steps run."""
STARVED_AFTER_STEPS = 10
"""The first steps (kernels compiled, caches filled, memory reserved) are not judged."""
GPU_STARVED = "gpu_starved"
"""The ``alert`` event's ``kind``."""
HOPPER_OR_LATER = ("H100", "H200", "GH200", "H800", "B200")
"""GPUs on which transformers' SDPA prefers cuDNN attention, which plans a graph per new shape."""


def peak_bf16_flops(name: str | None) -> float | None:
    """A GPU's dense bf16 peak in FLOP/s from its NVML name; ``None`` when not in the table."""
    if not name:
        return None
    for pattern, tflops in BF16_DENSE_TFLOPS:
        if pattern in name:
            return tflops * 1e12
    return None


def mfu(tokens_per_s: float | None, params: int | None, gpu_names: Sequence[str]) -> float | None:
    """Model-FLOPs utilisation (0..1) of a run on ``gpu_names``; ``None`` without tokens/s or
    parameters, on CPU (no GPUs), or when any GPU's peak is unknown."""
    if not tokens_per_s or not params or not gpu_names or tokens_per_s <= 0:
        return None
    peaks = [peak_bf16_flops(name) for name in gpu_names]
    if any(peak is None for peak in peaks):
        return None
    total = sum(peak for peak in peaks if peak is not None)
    return tokens_per_s * FLOPS_PER_PARAM_PER_TOKEN * params / total


def trained_rows(gpus: Iterable[Mapping[str, Any]] | None, gpus_used: int) -> list[Mapping[str, Any]]:
    """The memory rows of the GPUs the run trains on: torch's ``cuda:0 .. cuda:gpus_used-1``."""
    rows = list(gpus or [])
    return [row for i, row in enumerate(rows) if _cuda_index(row, i) < max(1, gpus_used)]


def _cuda_index(row: Mapping[str, Any], position: int) -> int:
    index = row.get("cuda_index")
    return index if isinstance(index, int) and not isinstance(index, bool) else position


def busy_pct(gpus: Iterable[Mapping[str, Any]] | None, gpus_used: int = 1) -> float | None:
    """The mean NVML busy % of the GPUs the run trains on, in one ``memory`` sample; ``None``
    when NVML reported none (a CPU run, or a GPU that does not report utilisation)."""
    numbers = [b for b in map(row_busy, trained_rows(gpus, gpus_used)) if b is not None]
    return sum(numbers) / len(numbers) if numbers else None


def row_busy(row: Mapping[str, Any]) -> float | None:
    """One GPU row's NVML busy %, or ``None`` when it has none (or a damaged one)."""
    value = row.get("util_pct")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 100:
        return float(value)
    return None


@dataclass(frozen=True)
class Cause:
    """One likely reason a GPU starves, with the knob that addresses it and the evidence."""

    weight: float
    """How strongly the run's own figures point at it (for the ranking)."""
    knob: str
    """The config knob to try, as ``section.name: value``."""
    evidence: str
    """What the run showed, in words."""

    def line(self) -> str:
        return f"{self.evidence} → {self.knob}"


@dataclass
class StarvedGpu:
    """Raises one alert when the GPU stays under :data:`STARVED_BELOW_PCT` busy over
    :data:`STARVED_WINDOW_S` while steps run, and again only after it was busy again.

    Feed :meth:`step` at every optimizer step boundary with the latest busy % (``None``: no
    reading: nothing is judged), and the evidence the causes are ranked from.
    """

    window_s: float = STARVED_WINDOW_S
    below_pct: float = STARVED_BELOW_PCT
    after_steps: int = STARVED_AFTER_STEPS
    samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=4096))
    raised: bool = False

    def step(self, step: int, now: float, busy: float | None) -> float | None:
        """Record one step boundary; returns the window's mean busy % when the alert is due."""
        if busy is None or step <= self.after_steps:
            return None
        self.samples.append((now, busy))
        # Keep one sample at or before the window's start, so that steps slower than the
        # window (a large model) are judged too: two steps a window apart are enough.
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window_s:
            self.samples.popleft()
        if len(self.samples) < 2 or now - self.samples[0][0] < self.window_s:
            return None  # not a whole window yet
        mean = sum(b for _, b in self.samples) / len(self.samples)
        if mean >= self.below_pct:
            self.raised = False  # busy again: a later starve is news
            return None
        if self.raised:
            return None
        self.raised = True
        return mean


def starved_causes(
    *,
    shapes: Sequence[tuple[int, int]],
    between_steps_share: float | None,
    predicted_peak: int | None,
    available: int | None,
    gpu_name: str | None,
    knobs: Mapping[str, Any],
) -> list[Cause]:
    """The likely causes of a starved GPU, most likely first, each naming a real knob, from
    what the run itself shows. Nothing is suggested that the run already has.

    Args:
        shapes: (rows, padded length) of the recent micro-batches the model ran.
        between_steps_share: Of the recent wall time, the share spent between steps (where
            the data loader collates the next batches), or ``None``.
        predicted_peak: The OOM forecast's predicted peak bytes, or ``None``.
        available: The bytes torch can have on the GPU, or ``None``.
        gpu_name: NVML's name of the GPU.
        knobs: The run's ``training`` settings.
    """
    causes: list[Cause] = []
    if between_steps_share is not None and between_steps_share > 0.2 and not knobs.get("dataloader_num_workers"):
        causes.append(
            Cause(
                between_steps_share,
                "training.dataloader_num_workers: 2",
                f"{between_steps_share:.0%} of the time passes between steps (loading and collating the next batches)",
            )
        )
    lengths = [length for _, length in shapes]
    distinct = len(set(lengths))
    if len(lengths) >= 4 and distinct > len(lengths) / 4:
        varied = distinct / len(lengths)
        if not knobs.get("pad_to_multiple_of") and not knobs.get("packing") and not knobs.get("padding_free"):
            causes.append(
                Cause(
                    varied,
                    "training.pad_to_multiple_of: 64 (or training.group_by_length: true)",
                    f"{distinct} different padded lengths in the last {len(lengths)} batches: shapes rarely repeat",
                )
            )
        if gpu_name and any(g in gpu_name for g in HOPPER_OR_LATER) and knobs.get("sdpa_backend", "auto") == "auto":
            causes.append(
                Cause(
                    0.9 * varied,
                    "training.sdpa_backend: flash",
                    f"on the {gpu_name}, cuDNN attention plans a new graph for each new shape",
                )
            )
    if predicted_peak and available and predicted_peak < 0.5 * available:
        batch = knobs.get("per_device_train_batch_size")
        to = f"{2 * batch}" if isinstance(batch, int) else "twice as many"
        causes.append(
            Cause(
                1 - predicted_peak / available,
                f"training.per_device_train_batch_size: {to}"
                " (halve gradient_accumulation_steps to keep the effective batch)",
                f"the longest batch ahead needs {predicted_peak / 2**30:.1f} of {available / 2**30:.1f} GiB",
            )
        )
    return sorted(causes, key=lambda c: -c.weight)


def starved_message(mean_busy: float, window_s: float, causes: Sequence[Cause]) -> str:
    """The alert's text: how starved, and what to try, most likely first."""
    head = f"GPU busy {mean_busy:.0f}% over the last {window_s:.0f} s while training"
    if not causes:
        return f"{head}: nothing the run shows explains it (another process on the GPU? a slow disk?)"
    tries = "; ".join(f"{i}) {cause.line()}" for i, cause in enumerate(causes, start=1))
    return f"{head}. Likely: {tries}"


def fmt_pct(value: float | None, unknown: str = "–") -> str:
    """``16%``, ``0.7%`` for small values, or ``unknown``."""
    if value is None or not math.isfinite(value):
        return unknown
    return f"{value:.1f}%" if value < 10 else f"{value:.0f}%"
