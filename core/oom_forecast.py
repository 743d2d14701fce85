"""Forecast an out-of-memory crash before the batch that causes it arrives.

OOMs in fine-tuning usually come late, on the longest batch (peft#739, qlora#225):
peak memory per step grows with the batch's padded token count. So the trainer
records, per optimizer step, the largest micro-batch's padded tokens and the step's
peak allocated bytes; :class:`OomForecaster` fits ``peak ≈ base + per_token × tokens``
and predicts the peak for the longest batch the dataset can still produce, against
the memory torch can actually have (the GPU's total minus what is not torch's).

Pure Python, no torch: the trainer feeds it numbers; tests feed it hand-made ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3

OK = "ok"
WATCH = "watch"
DANGER = "danger"
NOT_APPLICABLE = "n/a"
LEVELS = (OK, WATCH, DANGER)
"""The forecast's levels, least to most alarming."""

WATCH_AT = 0.85
"""Predicted peak above this share of the available memory: watch."""
DANGER_AT = 0.95
"""Above this share: danger (allocator overhead and fragmentation eat the rest)."""
MIN_POINTS = 3
"""Steps observed before the forecast is trusted."""

EXPANDABLE_SEGMENTS = "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"


def worst_batch_tokens(lengths: list[int], batch_size: int, max_seq_length: int) -> int:
    """Padded tokens of the worst micro-batch the data can produce.

    A batch is padded to its longest row, so the worst case is ``batch_size`` rows at the
    longest (truncated) length in the dataset.
    """
    if not lengths:
        return 0
    return batch_size * min(max(lengths), max_seq_length)


@dataclass(frozen=True)
class Fit:
    """``peak_bytes ≈ base + per_token × tokens`` and how far the worst point sat above it."""

    base: float
    per_token: float
    margin: float
    """The largest amount any observed peak exceeded the line by (so a prediction is
    an upper envelope, not an average)."""

    def predict(self, tokens: int) -> float:
        return self.base + self.per_token * tokens + self.margin


def fit_peaks(points: list[tuple[int, int]]) -> Fit | None:
    """Least-squares line through (tokens, peak bytes); ``None`` until tokens vary.

    With a single distinct token count (e.g. every batch padded to max length) the
    slope cannot be known; the forecaster then treats the worst batch as that one.
    """
    if len(points) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    slope = max(0.0, sxy / sxx)  # memory never shrinks with more tokens
    base = mean_y - slope * mean_x
    margin = max(0.0, max(y - (base + slope * x) for x, y in points))
    return Fit(base, slope, margin)


@dataclass
class Risk:
    """One forecast."""

    level: str
    predicted_peak: int | None
    available: int | None
    headroom: int | None
    reason: str
    seen_tokens: int = 0
    """The largest batch (padded tokens) observed so far."""

    def as_event(self) -> dict[str, object]:
        return {
            "level": self.level,
            "predicted_peak": self.predicted_peak,
            "available": self.available,
            "headroom": self.headroom,
            "reason": self.reason,
            "seen_tokens": self.seen_tokens,
        }


@dataclass
class OomForecaster:
    """Keeps the observed (tokens, peak) points and says when the risk level changes.

    Args:
        worst_tokens: From :func:`worst_batch_tokens`.
        batch_size: Rows per micro-batch (for the reason text).
    """

    worst_tokens: int
    batch_size: int
    points: list[tuple[int, int]] = field(default_factory=list)
    level: str | None = None
    """The last level reported."""
    max_points: int = 2000

    def observe(self, tokens: int, peak_bytes: int) -> None:
        """Record one optimizer step: its largest micro-batch's padded tokens and peak bytes."""
        self.points.append((tokens, peak_bytes))
        if len(self.points) > self.max_points:
            # Keep the extremes of the token range and the most recent points.
            self.points.sort()
            self.points = self.points[:10] + self.points[-10:] + self.points[10:-10][-(self.max_points - 20) :]

    def forecast(self, gpu_total: int, not_torch: int, fragmentation: str | None = None) -> Risk | None:
        """The current risk, or ``None`` until enough steps were seen.

        Args:
            gpu_total: NVML total bytes of the GPU.
            not_torch: Bytes in use that torch's allocator does not own (CUDA context,
                other processes, resident paged optimizer state): NVML used − torch reserved.
            fragmentation: A sentence about fragmentation to append, if any.
        """
        if len(self.points) < MIN_POINTS:
            return None
        available = gpu_total - max(0, not_torch)
        fit = fit_peaks(self.points)
        seen_max_tokens = max(t for t, _ in self.points)
        if fit is None:
            # Token counts never varied: the worst batch is one we have already seen.
            predicted = max(p for _, p in self.points)
            basis = f"every batch so far had {seen_max_tokens:,} tokens"
        else:
            predicted = int(fit.predict(max(self.worst_tokens, seen_max_tokens)))
            basis = (
                f"longest batch ahead: {self.batch_size} × {self.worst_tokens // max(1, self.batch_size):,} tokens"
                f" (seen so far: {seen_max_tokens:,})"
            )
        share = predicted / available if available > 0 else float("inf")
        level = OK if share < WATCH_AT else (WATCH if share < DANGER_AT else DANGER)
        reason = f"{basis}; predicted peak {predicted / GIB:.1f} GiB of {available / GIB:.1f} GiB available"
        if fragmentation:
            reason += f"; {fragmentation}"
        return Risk(level, predicted, available, available - predicted, reason, seen_max_tokens)

    def changed(self, risk: Risk | None) -> bool:
        """Whether ``risk`` is a new level (and remember it)."""
        if risk is None or risk.level == self.level:
            return False
        self.level = risk.level
        return True


def fragmentation_note(reserved: int, allocated: int, retries: int, previous_retries: int) -> str | None:
    """A sentence when the allocator is fragmenting, with PyTorch's remedy; else ``None``.

    Fragmentation: much more reserved than allocated (> 25% and > 1 GiB), or the
    allocator had to free its cache and retry (``num_alloc_retries`` rising).
    """
    slack = reserved - allocated
    if retries > previous_retries:
        return f"allocator retries rising ({retries}): memory is fragmented; try {EXPANDABLE_SEGMENTS}"
    if reserved > 0 and slack > GIB and slack > 0.25 * reserved:
        return f"{slack / GIB:.1f} GiB reserved but unused (fragmentation); try {EXPANDABLE_SEGMENTS}"
    return None


OOM_SUGGESTIONS = (
    "halve per_device_train_batch_size and double gradient_accumulation_steps (same effective batch)",
    "lower training.max_seq_length (the longest batches set the peak)",
    "turn on training.gradient_checkpointing",
    f"set {EXPANDABLE_SEGMENTS} against fragmentation",
)
"""What to try after an OOM, most effective first."""
