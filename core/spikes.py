"""Loss-spike detection tuned for fine-tuning curves.

Standard library only: the trainer feeds every optimizer step to :class:`SpikeDetector`
and emits a ``spike`` event for each :class:`Spike` it returns; the dashboard and the
benchmark (``benchmarks/spikes/``) import this module without torch.

The detector works on the logarithm of the loss, so a 1.5x jump is the same event at a
loss of 0.3 or 3.0, and multiplicative batch noise has one scale per run. It combines
rules that need no statistics (non-finite values, collapse to zero, gross jumps) with
robust statistics over a rolling window (a short median for the current level, robust
spreads of step-to-step differences and of residuals for the noise), and keeps a long
memory of the best level the run has reached, so that a run that diverged and settled
on a plateau does not go quiet when the window adapts.
"""

from __future__ import annotations

import heapq
import math
import operator
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["warn", "severe", "fatal"]
"""``warn``: worth a look, the run is probably fine. ``severe``: the run is likely
damaged (a gross jump, or a loss that stays well above its best level). ``fatal``:
the run is broken (non-finite loss, collapse to zero, or no update for many steps)."""

Kind = Literal["loss_spike", "grad_norm_spike", "non_finite", "collapse"]

LOSS_SPIKE: Kind = "loss_spike"
GRAD_NORM_SPIKE: Kind = "grad_norm_spike"
NON_FINITE: Kind = "non_finite"
COLLAPSE: Kind = "collapse"

_IQR_TO_SIGMA = 1.349  # inter-quartile range of a unit normal
_TRIMMED_TO_SIGMA = 0.6616  # standard deviation of a unit normal's central 80%
_COLLAPSE_LOSS = 1e-6


@dataclass(frozen=True)
class Spike:
    """One event the detector reports.

    Attributes:
        step: The optimizer step it fired on.
        loss: That step's loss (NaN or inf for a non-finite loss).
        baseline: The loss it is compared with: the recent typical loss (median of the
            last 8 accepted steps) for every kind except a sustained elevation, where
            it is the best (lowest) smoothed loss of the run. NaN when no loss was seen
            yet. (A ``grad_norm_spike``'s reason gives the grad norm's own median.)
        score: How far above the baseline: in robust standard deviations (σ) of the
            log-loss residual for a one-step ``loss_spike`` (of the mean of 4 residuals
            for a rise that stays), of the log grad norm for a ``grad_norm_spike``; as a
            plain ratio ``loss / baseline`` for a gross jump, a warn grown into one, and
            a sustained elevation (the reason says which); the number of
            consecutive non-finite grad norms for that rule; ``0.0`` for a non-finite
            loss and a collapse, which have no magnitude.
        severity: ``warn``, ``severe`` or ``fatal``.
        kind: ``loss_spike``, ``grad_norm_spike``, ``non_finite`` or ``collapse``.
        reason: A short sentence in words, for the dashboard and the log.
        grad_norm: That step's grad norm, when the trainer reported one.
    """

    step: int
    loss: float
    baseline: float
    score: float
    severity: Severity
    kind: Kind
    reason: str
    grad_norm: float | None = None

    def as_event(self) -> dict[str, Any]:
        """The fields of a ``spike`` event (without ``v``, ``seq``, ``t``, ``type``)."""
        return {
            "step": self.step,
            "loss": self.loss,
            "baseline": self.baseline,
            "score": round(self.score, 3) if math.isfinite(self.score) else self.score,
            "severity": self.severity,
            "kind": self.kind,
            "reason": self.reason,
            "grad_norm": self.grad_norm,
        }


class _RollingWindow:
    """The last ``size`` values, kept both in arrival order and sorted.

    Adding is O(size) (a bisect plus a C-level list shift); median and quantiles are O(1).
    """

    __slots__ = ("size", "_order", "_sorted")

    def __init__(self, size: int) -> None:
        self.size = size
        self._order: deque[float] = deque()
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._order)

    def add(self, value: float) -> None:
        if len(self._order) == self.size:
            old = self._order.popleft()
            del self._sorted[bisect_left(self._sorted, old)]
        self._order.append(value)
        insort(self._sorted, value)

    def reset(self, values: Iterable[float]) -> None:
        self._order.clear()
        self._sorted.clear()
        for value in values:
            self.add(value)

    def median(self) -> float:
        s = self._sorted
        n = len(s)
        mid = n // 2
        return s[mid] if n % 2 else 0.5 * (s[mid - 1] + s[mid])

    def quantile(self, q: float) -> float:
        s = self._sorted
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    def trimmed_sigma(self) -> float:
        """The standard deviation of the central 80%, scaled to a normal's σ.

        Robust to 10% outliers on either side, and steadier than the inter-quartile range
        from the same window (about 11% against 14% relative spread over 64 values).
        """
        s = self._sorted
        cut = len(s) // 10
        core = s[cut : len(s) - cut] if cut else s
        n = len(core)
        mean = sum(core) / n
        variance = sum(map(operator.mul, core, core)) / n - mean * mean
        return math.sqrt(max(variance, 0.0)) / _TRIMMED_TO_SIGMA

    def iqr_sigma(self) -> float:
        """The inter-quartile range scaled to a standard deviation (robust to 25% outliers)."""
        return (self.quantile(0.75) - self.quantile(0.25)) / _IQR_TO_SIGMA


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


class SpikeDetector:
    """Watches a run's per-step loss and grad norm and reports spikes, once each.

    Feed every optimizer step to :meth:`update`; it returns a :class:`Spike` on the step
    an event starts and ``None`` otherwise. All loss statistics are on ``log(loss)``, so
    thresholds are relative and the same curve scaled by 0.1 or 10 gives the same
    events. Drops never alarm. Thresholds below are at ``sensitivity=1``; see the end.
    The rules, in the order they are checked:

    1. **Non-finite loss** (NaN/Inf): ``fatal`` ``non_finite`` at once; once per
       stretch of non-finite losses.
    2. **Collapse**: loss below 1e-6 (exactly 0.0 included) while the grad norm is NaN,
       Inf, zero or not reported: ``fatal`` ``collapse``. A ratio rule never fires on a
       loss that falls to zero; this one does.
    3. **Non-finite grad norm**: routine under fp16 (the grad scaler skips the step and
       lowers its scale), so a NaN/Inf grad norm with a finite loss is not an event by
       itself. ``nonfinite_grad_patience`` (default 20) consecutive ones are ``fatal``
       ``non_finite``: the scale would have been halved 20 times, so the run has long
       stopped updating.
    4. **Gross jump**: loss at least 3x the recent level (the median of the last 8
       accepted losses): ``severe`` ``loss_spike``. It needs one earlier step, so it
       fires during warm-up (too high a learning rate can jump the loss 10-25x within
       the first ten steps).
    5. **One-step spike**, after ``warmup_steps`` (default 16) accepted steps. The
       residual is ``r = log(loss) - log(recent level)``; the expected residual ``mu``
       is the median of the last ``window`` (64) accepted residuals when positive (the
       lag of the level behind a rising length-grouped ramp), else 0 (the end of a fast
       fall is no surprise); σ is the step-to-step noise (the 10%-trimmed spread of the
       last ``window`` step-to-step differences, scaled to one residual) kept within
       0.7-1.2x the inter-quartile σ of the residuals themselves, and at least 0.4%.
       ``z = (r - mu) / σ >= 4.0`` fires a ``warn`` ``loss_spike`` (``severe`` when the
       grad norm spikes on the same step). Differences and a short median do not see
       the trend, an epoch step-down or a slow drift; the residual window sees both
       halves of alternating long and short batches.
    6. **Rise that stays**: 4 consecutive residuals all above ``mu`` with a mean excess of
       at least 3.2σ (about 5 standard errors of such a mean): ``warn`` ``loss_spike``.
       It catches a loss that climbs a few σ within a couple of steps and stays up,
       which no single step shows.
    7. **Sustained elevation**: the median of the last 21 losses is at least 1.5x the best
       (lowest) such median of the run: ``severe`` ``loss_spike``. This long memory does
       not adapt: a run that diverged and sits on a plateau at 3-4x is reported when the
       plateau is reached and again every ``sustained_refire_steps`` (default 200) steps
       while it lasts, never every step; the rule re-arms when the median is back below
       ``sqrt(1.5)`` times the best level. It stays quiet about a rise that rules 4-6
       already reported as ``severe``, and turns a ``warn`` of rules 5-6 that does not
       come down into ``severe``, once.
    8. **Grad-norm spike**, after 16 steps: ``log(grad_norm)`` at least 6σ above the
       median of the last ``window`` finite grad norms (inter-quartile σ, at least 0.05)
       and at least 3x that median: ``warn`` ``grad_norm_spike``, then quiet for
       ``cooldown_steps``. Not reported on its own while a loss event is in progress.

    Routine jumps: a one-step or rise-that-stays candidate is dropped when at least 3
    earlier jumps (steps where z rose through 2) within the last 256 steps were at least
    ``1 / 1.25`` of its size: length-grouped batches can make the loss jump at the start
    of every mega-batch, and that rhythm is not a spike. Gross jumps always fire.

    Heavy tails: a one-step candidate is also dropped unless its z is more than
    ``TAIL_MARGIN`` (1.4) times the second largest z of the earlier excursions that did
    not fire (steps where z rose through 2) within the last ``TAIL_STEPS`` (2000) steps.
    With normal noise that bar sits near the 4σ threshold and changes little; with
    Student-t noise the noise itself keeps reaching 5-8σ, the bar rises with it, and
    such excursions stop firing (the benchmark's Student-t(4) stress set: 15.6 false
    alarms per 10k clean steps without this rule, 9.2 with it). Excursions that fired
    are left out, so one real spike does not hide the next.

    Persistence and cool-down: once rule 4, 5 or 6 fires, the baseline is frozen, and the
    steps that stay elevated (above ``mu`` plus half the firing threshold, or above
    ``sqrt(3)`` times the baseline after a gross jump) belong to the same event and are
    kept out of the statistics. The event ends after two steps back below that line;
    for ``cooldown_steps`` (default 10) after that no new loss spike is reported while
    the recovery refills the window. An event still elevated after 30 steps is a level
    shift: the short-term statistics adopt the new level, and rule 7 keeps comparing it
    with the run's best. Within one event, a ``warn`` that grows into a gross jump is
    reported once more, as ``severe``.

    ``sensitivity`` (the ``monitor.spike_sensitivity`` knob, in (0, 10], default 1.0)
    divides every threshold by ``sqrt(sensitivity)``: σ thresholds directly (the
    one-step 4.0σ becomes 2.8σ at 2.0 and 5.7σ at 0.5) and ratio thresholds in log space
    (the gross 3x becomes 2.17x at 2.0 and 4.7x at 0.5; the sustained 1.5x becomes 1.33x
    and 1.77x). The non-finite, collapse and heavy-tail rules do not depend on it. On the benchmark
    in ``benchmarks/spikes/`` (see its RESULTS.md) the default finds ~95% of injected
    spikes and bumps of 4σ and more, virtually all of 10σ and more, with ~0.4 false alarms per
    10,000 clean steps; 2.0 finds ~97% at ~18 false alarms per 10,000.

    Each update costs O(window): bisected insertions into short sorted lists and a
    trimmed spread over ``window`` values (about 7 µs in CPython).
    """

    Z_THRESHOLD = 4.0
    """σ above the expected residual for a one-step loss spike, at sensitivity 1."""
    RUN_STEPS = 4
    """Consecutive steps whose mean residual the run rule tests."""
    RUN_Z_THRESHOLD = 3.2
    """Mean excess, in σ, of ``RUN_STEPS`` consecutive steps that all sit above the expected
    residual: a loss that rose and stayed up (about 5 standard errors of such a mean)."""
    GROSS_RATIO = 3.0
    """Loss over its recent level that is a gross jump, at sensitivity 1."""
    SUSTAINED_RATIO = 1.5
    """Recent median over the best median of the run that is a sustained elevation."""
    GRAD_Z_THRESHOLD = 6.0
    """σ of log grad norm for a grad-norm spike, at sensitivity 1."""
    GRAD_RATIO = 3.0
    """Minimum grad norm over its median for a grad-norm spike, at sensitivity 1."""
    SIGMA_FLOOR = 0.004
    """Smallest noise σ assumed, in log units (0.4%): a perfectly smooth curve must not
    turn a 1% wiggle into a 10σ event."""
    GRAD_SIGMA_FLOOR = 0.05
    """Smallest σ of log grad norm assumed."""
    CENTER_STEPS = 8
    """Accepted steps whose median is the recent level (even, so that alternating high and
    low batches put it between the two)."""
    LEVEL_STEPS = 21
    """Steps (all finite ones) whose median is the smoothed level for the long memory."""
    # A difference of two steps is sqrt(2) noisier than one step; a residual against an
    # 8-step median is ~1.1x noisier than one step.
    _SIGMA_SCALE = 1.1 / math.sqrt(2.0)
    _SPREAD_CAP = 1.2  # σ at most this times the residuals' own spread (alternating batches)
    NOVELTY_STEPS = 256
    """Steps over which earlier jumps count as the run's routine."""
    NOVELTY_RANK = 3
    """Earlier jumps of about the same size that make a jump routine."""
    NOVELTY_MARGIN = 1.25
    """How much larger than the routine jumps a jump must be to be a spike."""
    ACCEPT_AFTER = 30
    """Steps an event may stay elevated before it is taken as a level shift."""
    TAIL_STEPS = 2000
    """Steps over which the run's own largest excursions set how heavy its noise tails are."""
    TAIL_RANK = 2
    """Which largest earlier excursion (in σ) a one-step spike must clear."""
    TAIL_MARGIN = 1.4
    """How far beyond that excursion a one-step spike must reach."""

    def __init__(
        self,
        sensitivity: float = 1.0,
        *,
        window: int = 64,
        warmup_steps: int = 16,
        cooldown_steps: int = 10,
        nonfinite_grad_patience: int = 20,
        sustained_refire_steps: int = 200,
    ) -> None:
        """Create a detector.

        Args:
            sensitivity: Every threshold is divided by its square root (see the class
                docstring); in (0, 10].
            window: Accepted steps whose residuals (and grad norms) give the noise scale.
            warmup_steps: Accepted steps before the statistical rules may fire; the
                non-finite, collapse and gross-jump rules need none.
            cooldown_steps: Steps after an event ends during which no new loss spike
                is reported (the recovery); also the quiet time after a grad-norm spike.
            nonfinite_grad_patience: Consecutive NaN/Inf grad norms (with a finite
                loss) that are fatal.
            sustained_refire_steps: While a sustained elevation persists, report it
                again at most this often.

        Raises:
            ValueError: If ``sensitivity`` is not in (0, 10] or a count is not positive.
        """
        if not (isinstance(sensitivity, (int, float)) and 0.0 < sensitivity <= 10.0):
            raise ValueError(f"sensitivity must be in (0, 10], got {sensitivity!r}")
        for name, value in (
            ("window", window),
            ("warmup_steps", warmup_steps),
            ("nonfinite_grad_patience", nonfinite_grad_patience),
            ("sustained_refire_steps", sustained_refire_steps),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if cooldown_steps < 0:
            raise ValueError(f"cooldown_steps must be at least 0, got {cooldown_steps}")
        self.sensitivity = float(sensitivity)
        self.warmup_steps = warmup_steps
        self.cooldown_steps = cooldown_steps
        self.nonfinite_grad_patience = nonfinite_grad_patience
        self.sustained_refire_steps = sustained_refire_steps

        s = math.sqrt(self.sensitivity)
        self._z_fire = self.Z_THRESHOLD / s
        self._z_exit = 0.5 * self._z_fire
        self._z_run = self.RUN_Z_THRESHOLD / s
        self._gross = math.log(self.GROSS_RATIO) / s
        self._sustained = math.log(self.SUSTAINED_RATIO) / s
        self._grad_z = self.GRAD_Z_THRESHOLD / s
        self._grad_ratio = math.log(self.GRAD_RATIO) / s

        self._center = _RollingWindow(self.CENTER_STEPS)  # accepted log losses
        self._last_x: float | None = None  # the last accepted log loss
        self._diffs = _RollingWindow(window)  # accepted step-to-step differences: the noise
        self._resid = _RollingWindow(window)  # accepted residuals: the expected one
        self._level = _RollingWindow(self.LEVEL_STEPS)  # every finite log loss
        self._grad = _RollingWindow(window)  # accepted log grad norms
        self._floor = math.inf  # best (lowest) level median of the run
        self._run: deque[float] = deque(maxlen=self.RUN_STEPS - 1)  # the last accepted residuals
        self._edges: deque[tuple[int, float]] = deque()  # (step, excess) where z rose through 2
        self._prev_z = 0.0
        self._tail: deque[tuple[int, float]] = deque()  # (step, z) where z rose through 2

        # The loss event in progress (rules 4, 5 and 6).
        self._active = False
        self._ep_center = 0.0
        self._ep_exit = 0.0  # log excess over _ep_center below which a step is back to normal
        self._ep_len = 0
        self._ep_below = 0
        self._ep_severity: Severity = "warn"
        self._ep_recent: deque[float] = deque(maxlen=self.CENTER_STEPS)
        self._cooldown = 0

        self._sustained_latched = False
        self._sustained_last = 0
        self._loss_nonfinite = False
        self._collapsed = False
        self._grad_nonfinite_run = 0
        self._grad_cooldown = 0

    # -- public -----------------------------------------------------------------

    def update(self, step: int, loss: float | None, grad_norm: float | None = None) -> Spike | None:
        """Take one optimizer step's values; return the event that starts here, if any.

        Args:
            step: The optimizer step (global step).
            loss: This step's loss (not a window average); ``None`` if not reported.
            grad_norm: This step's total grad norm before clipping; ``None`` if not
                reported, NaN/Inf when the grad scaler skipped the step.

        Returns:
            A :class:`Spike` when an event starts (or escalates, or a sustained
            elevation is reported again) on this step, else ``None``.
        """
        if loss is None:
            return None
        grad_finite = _finite(grad_norm)

        # 1. Non-finite loss: nothing to compare, the run is broken.
        if not math.isfinite(loss):
            if self._loss_nonfinite:
                return None
            self._loss_nonfinite = True
            return Spike(
                step,
                loss,
                self._baseline_loss(),
                0.0,
                "fatal",
                NON_FINITE,
                f"loss is {loss}",
                grad_norm,
            )
        self._loss_nonfinite = False

        # 2. Collapse to zero: a ratio rule never fires on it.
        if loss < _COLLAPSE_LOSS:
            if grad_norm is None or not grad_finite or grad_norm == 0.0:
                if self._collapsed:
                    return None
                self._collapsed = True
                what = "not reported" if grad_norm is None else str(grad_norm)
                return Spike(
                    step,
                    loss,
                    self._baseline_loss(),
                    0.0,
                    "fatal",
                    COLLAPSE,
                    f"loss collapsed to {loss:.3g} with grad norm {what}",
                    grad_norm,
                )
            return None  # a tiny loss with a live gradient: nothing to take a log of
        self._collapsed = False

        # 3. Non-finite grad norm: routine under fp16 unless it persists.
        event: Spike | None = None
        if grad_norm is not None and not grad_finite:
            self._grad_nonfinite_run += 1
            if self._grad_nonfinite_run == self.nonfinite_grad_patience:
                event = Spike(
                    step,
                    loss,
                    self._baseline_loss(),
                    float(self._grad_nonfinite_run),
                    "fatal",
                    NON_FINITE,
                    f"grad norm non-finite for {self._grad_nonfinite_run} steps in a row: no update is being applied",
                    grad_norm,
                )
        else:
            self._grad_nonfinite_run = 0

        if self._grad_cooldown:
            self._grad_cooldown -= 1
        grad_spike = self._grad_rule(grad_norm) if grad_finite else None
        if grad_spike is not None and self._grad_cooldown:
            grad_spike = None  # the same grad-norm burst as the last report
        elif grad_spike is not None:
            self._grad_cooldown = self.cooldown_steps
        loss_event = self._loss_rules(step, loss, grad_norm, grad_spike is not None)
        if event is not None:
            return event
        if loss_event is not None:
            return loss_event
        if grad_spike is not None and grad_norm is not None and not self._active:
            z, median = grad_spike
            typical = math.exp(median)
            event = Spike(
                step,
                loss,
                self._baseline_loss(),
                z,
                "warn",
                GRAD_NORM_SPIKE,
                f"grad norm {grad_norm:.3g} is {grad_norm / typical:.1f}x its recent median {typical:.3g} "
                f"({z:.1f}σ); the loss did not spike",
                grad_norm,
            )
        return event

    # -- rules ------------------------------------------------------------------

    def _baseline_loss(self) -> float:
        return math.exp(self._center.median()) if len(self._center) else math.nan

    def _grad_rule(self, grad_norm: float | None) -> tuple[float, float] | None:
        """Add a finite grad norm to its window; return (z, median log) if it is a spike."""
        if grad_norm is None or grad_norm <= 0.0:
            return None
        g = math.log(grad_norm)
        window = self._grad
        if len(window) >= self.warmup_steps:
            median = window.median()
            sigma = max(window.iqr_sigma(), self.GRAD_SIGMA_FLOOR)
            z = (g - median) / sigma
            if z >= self._grad_z and g - median >= self._grad_ratio:
                return z, median  # kept out of the window
        window.add(g)
        return None

    def _loss_rules(self, step: int, loss: float, grad_norm: float | None, grad_spike: bool) -> Spike | None:
        x = math.log(loss)
        self._level.add(x)
        sustained = self._sustained_rule(step, loss, grad_norm)

        if self._active:
            event = self._continue_event(step, loss, x, grad_norm)
            if event is not None:
                return event
            if self._active and sustained is not None:
                # Still the same event: a sustained elevation only escalates a warn.
                if self._ep_severity != "warn":
                    return None
                self._ep_severity = "severe"
            return sustained

        if not len(self._center):
            self._accept(x)
            return sustained
        level = self._center.median()
        r = x - level
        fired: Spike | None = None
        warm = len(self._diffs) >= self.warmup_steps
        if self._cooldown:
            self._cooldown -= 1
        elif r >= self._gross:
            ratio = math.exp(r)
            fired = Spike(
                step,
                loss,
                math.exp(level),
                ratio,
                "severe",
                LOSS_SPIKE,
                f"loss jumped {ratio:.1f}x above its recent level",
                grad_norm,
            )
            exit_excess = 0.5 * self._gross
            if warm:
                exit_excess = min(exit_excess, self._expected() + self._z_exit * self._sigma())
            self._start_event(level, exit_excess, "severe")
        elif warm:
            mu = self._expected()
            sigma = self._sigma()
            z = (r - mu) / sigma
            severity: Severity = "severe" if grad_spike else "warn"
            with_grad = " with a grad-norm spike" if grad_spike else ""
            novel = z < self._z_fire or (self._novel(step, r - mu) and self._beyond_tail(step, z))
            if z >= 2.0 and self._prev_z < 2.0:
                self._edges.append((step, r - mu))
                if z < self._z_fire or not novel:
                    self._tail.append((step, z))  # the noise's own excursion, not an event
                self._forget(step)
            self._prev_z = z
            if z >= self._z_fire and novel:
                fired = Spike(
                    step,
                    loss,
                    math.exp(level),
                    z,
                    severity,
                    LOSS_SPIKE,
                    f"loss {math.exp(r):.2f}x its recent level, {z:.1f}σ above the usual step-to-step noise{with_grad}",
                    grad_norm,
                )
            elif len(self._run) == self.RUN_STEPS - 1 and r > mu and min(self._run) > mu:
                mean_excess = (sum(self._run) + r) / self.RUN_STEPS - mu
                z_run = mean_excess / sigma
                if z_run >= self._z_run and self._novel(step, mean_excess):
                    fired = Spike(
                        step,
                        loss,
                        math.exp(level),
                        z_run,
                        severity,
                        LOSS_SPIKE,
                        f"loss rose and stayed up: {self.RUN_STEPS} steps averaging {z_run:.1f}σ above the usual "
                        f"step-to-step noise, now {math.exp(r):.2f}x its recent level{with_grad}",
                        grad_norm,
                    )
            if fired is not None:
                self._start_event(level, mu + self._z_exit * sigma, severity)
        if fired is None:
            self._accept(x)
            return sustained
        self._ep_recent.append(x)
        if fired.severity == "severe":
            self._latch_sustained(step)
        return fired

    def _novel(self, step: int, excess: float) -> bool:
        """Whether a jump is larger than what the run does routinely.

        Length-grouped batches can make the loss jump up at the start of every mega-batch;
        a jump that ``NOVELTY_RANK`` earlier jumps within ``NOVELTY_STEPS`` steps matched
        (within ``NOVELTY_MARGIN``) is the run's rhythm, not a spike.
        """
        edges = self._edges
        while edges and edges[0][0] <= step - self.NOVELTY_STEPS:
            edges.popleft()
        if len(edges) < self.NOVELTY_RANK:
            return True
        routine = sorted(e for _, e in edges)[-self.NOVELTY_RANK]
        return excess > self.NOVELTY_MARGIN * routine

    def _forget(self, step: int) -> None:
        """Drop excursions too old to count, so a run of a million quiet steps keeps a few."""
        while self._edges and self._edges[0][0] <= step - self.NOVELTY_STEPS:
            self._edges.popleft()
        while self._tail and self._tail[0][0] <= step - self.TAIL_STEPS:
            self._tail.popleft()

    def _beyond_tail(self, step: int, z: float) -> bool:
        """Whether a one-step spike reaches beyond what the run's noise does by itself."""
        tail = self._tail
        while tail and tail[0][0] <= step - self.TAIL_STEPS:
            tail.popleft()
        if len(tail) < self.TAIL_RANK:
            return True
        return z > self.TAIL_MARGIN * heapq.nlargest(self.TAIL_RANK, (t for _, t in tail))[-1]

    def _accept(self, x: float) -> None:
        """A normal step: it joins the statistics."""
        if self._last_x is not None:
            r = x - self._center.median()
            self._diffs.add(x - self._last_x)
            self._resid.add(r)
            self._run.append(r)
        self._center.add(x)
        self._last_x = x

    def _expected(self) -> float:
        """The residual a normal step has: the lag of the recent level behind a rising
        trend (a length-grouped ramp). A falling trend counts as zero, so that the end of
        a fast fall is no surprise."""
        return max(self._resid.median(), 0.0)

    def _sigma(self) -> float:
        """Robust σ of a residual.

        The spread of the residuals themselves is the honest measure, but it grows while a
        trend bends (the recent level lags by a changing amount). The spread of
        step-to-step differences does not see trends, but overstates alternating batches
        and understates a fast length-grouped ramp. So: the step-to-step figure, kept
        within 0.7-1.2x the residual spread, and never below the floor.
        """
        spread = self._resid.iqr_sigma()
        step_noise = self._SIGMA_SCALE * self._diffs.trimmed_sigma()
        return max(min(step_noise, self._SPREAD_CAP * spread), 0.7 * spread, self.SIGMA_FLOOR)

    def _start_event(self, level: float, exit_excess: float, severity: Severity) -> None:
        self._active = True
        self._ep_center = level
        self._ep_exit = exit_excess
        self._ep_len = 1
        self._ep_below = 0
        self._ep_severity = severity
        self._ep_recent.clear()
        self._run.clear()

    def _continue_event(self, step: int, loss: float, x: float, grad_norm: float | None) -> Spike | None:
        """One more step of the event in progress; ends it when the loss is back."""
        excess = x - self._ep_center
        self._ep_len += 1
        self._ep_recent.append(x)
        if excess < self._ep_exit:
            self._ep_below += 1
            if self._ep_below >= 2:
                self._active = False
                self._cooldown = self.cooldown_steps
            self._accept(x)  # back-to-normal steps feed the statistics as usual
            return None
        self._ep_below = 0
        if self._ep_severity == "warn" and excess >= self._gross:
            self._ep_severity = "severe"
            self._latch_sustained(step)
            ratio = math.exp(excess)
            return Spike(
                step,
                loss,
                math.exp(self._ep_center),
                ratio,
                "severe",
                LOSS_SPIKE,
                f"loss kept rising: now {ratio:.1f}x its level before the spike",
                grad_norm,
            )
        if self._ep_len >= self.ACCEPT_AFTER:
            # A level shift, not a spike: the short-term statistics adopt the new level;
            # the long memory (sustained rule) still compares it with the run's best.
            self._active = False
            self._center.reset(self._ep_recent)
            self._last_x = x
        return None

    def _latch_sustained(self, step: int) -> None:
        """A severe event was just reported: the sustained rule stays quiet about it."""
        self._sustained_latched = True
        self._sustained_last = step

    def _sustained_rule(self, step: int, loss: float, grad_norm: float | None) -> Spike | None:
        level = self._level.median()
        if len(self._level) >= 5:
            self._floor = min(self._floor, level)
        elevation = level - self._floor
        if not self._sustained_latched:
            if elevation >= self._sustained and len(self._level) == self._level.size:
                self._latch_sustained(step)
                return self._sustained_spike(step, loss, grad_norm, elevation, "loss stayed")
            return None
        if elevation < 0.5 * self._sustained:
            # Re-arm once the median has had time to see what was reported (a severe
            # jump latches this rule before the median of 21 steps has moved).
            if step - self._sustained_last >= self.LEVEL_STEPS:
                self._sustained_latched = False
            return None
        if elevation >= self._sustained and step - self._sustained_last >= self.sustained_refire_steps:
            self._sustained_last = step
            return self._sustained_spike(step, loss, grad_norm, elevation, "loss still")
        return None

    def _sustained_spike(self, step: int, loss: float, grad_norm: float | None, elevation: float, verb: str) -> Spike:
        ratio = math.exp(elevation)
        return Spike(
            step,
            loss,
            math.exp(self._floor),
            ratio,
            "severe",
            LOSS_SPIKE,
            f"{verb} {ratio:.1f}x above the best level of the run (median of the last {self.LEVEL_STEPS} steps)",
            grad_norm,
        )
