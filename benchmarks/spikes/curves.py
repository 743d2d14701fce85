"""Labelled synthetic fine-tuning loss curves for the spike-detector benchmark.

A clean curve is built in log space from what real fine-tuning histories show:

- a fast initial fall then a plateau, ``loss = f * (1 + (q - 1) * exp(-u / tau))``, where
  ``u`` is the learning rate integrated over steps (so a linear LR warm-up delays the fall
  and a cosine or linear decay slows it), ``f`` (the final loss) is log-uniform in
  [0.3, 3.0], ``q`` (initial over final) in [1.3, 4], ``tau`` in [15, 300] full-rate steps,
  plus a slow drift of up to -15% over the run;
- 1 to 4 epochs, each boundary a step-down of 5-20%, and the partial last batch of each
  epoch (drop_last off, the Trainer's default) whose noise is ``sqrt(batch / rows)``
  times larger;
- multiplicative log-normal noise, σ log-uniform in [0.01, 0.12];
- length grouping in 60% of curves: either alternating high/low batches (amplitude
  3-20% in log) or the ramp that ``group_by_length`` makes (each mega-batch is sorted
  longest first and longer sequences have a lower per-token loss, so the loss rises over
  8-50 steps and drops at the next mega-batch; amplitude 3-15%);
- a grad norm with its own log-normal noise, decaying; under fp16 (30% of curves) the
  first few steps and about one step in a thousand have a NaN grad norm (the grad
  scaler skipping a step), which is routine.

An injected curve (1000-4000 steps) adds labelled events: one-step spikes (60%) and 3-10
step bumps, 120-500 steps apart, sized in robust σ of the local noise (log-uniform from
4σ up to a 20x jump; half of them with a grad-norm jump too); in 15% of curves an early
gross jump (10-25x on one of the first ten steps, decaying over 20-100 steps); in half
of them a terminal event in the second half: slow divergence (a ramp over 50-200 steps
to 2-4x, then a plateau to the end, labelled until 50 steps after the ramp), NaN loss,
or a collapse to 0.0 with a NaN or zero grad norm.

Two stress variants of the clean curves (``clean_curve(heavy_tails=True)``,
``clean_curve(reverse_ramp=True)``) probe what the main set does not: Student-t noise
with 4 degrees of freedom, and the length-grouped ramp the other way round (longer
sequences with the higher per-token loss, so the loss jumps up at every mega-batch).

"σ of the local noise" is measured, not assumed: 1.4826 x the median absolute deviation
of the clean curve's log loss around its noiseless trend over the 64 steps before the
event, so oscillation counts as noise, as it does for any detector.

Every curve is a pure function of its seed (``random.Random(seed)``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

SPIKE = "spike"
BUMP = "bump"
DIVERGENCE = "divergence"
EARLY_JUMP = "early_jump"
NAN = "nan"
COLLAPSE = "collapse"
SHAPES = (SPIKE, BUMP, DIVERGENCE, EARLY_JUMP, NAN, COLLAPSE)

MIN_SIGMA = 4.0
"""The smallest injected spike or bump, in σ of the local noise."""
MAX_RATIO = 20.0
"""The largest injected spike or bump, as a loss ratio."""


@dataclass(frozen=True)
class InjectedEvent:
    """One labelled event in a curve (steps are 1-based, like a trainer's global step).

    Attributes:
        shape: One of :data:`SHAPES`.
        start: The first step the event changes.
        end: The last step of its labelled window: an alarm on ``start..end`` (plus the
            evaluator's tolerance) detects it.
        affected_end: The last step the event still changes; a second alarm up to here
            is a duplicate about the same problem, not a false alarm.
        size_sigma: The injected jump in σ of the local noise (log space); NaN for NaN
            loss and collapse.
        ratio: The injected jump as a loss ratio (the peak for ramps); NaN where it has none.
    """

    shape: str
    start: int
    end: int
    affected_end: int
    size_sigma: float
    ratio: float


@dataclass
class Curve:
    """A loss curve with its grad norms and labels; ``loss[i]`` is step ``i + 1``."""

    seed: int
    loss: list[float]
    grad_norm: list[float]
    events: list[InjectedEvent] = field(default_factory=list)
    params: dict[str, float | str] = field(default_factory=dict)


@dataclass
class _Parts:
    trend: list[float]  # noiseless log loss (fall, LR schedule, drift, epoch steps)
    wiggle: list[float]  # oscillation + noise, log
    log_grad: list[float]
    grad_nan: list[bool]
    params: dict[str, float | str]


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _clean_parts(rng: random.Random, length: int, heavy_tails: bool = False, reverse_ramp: bool = False) -> _Parts:
    final = _log_uniform(rng, 0.3, 3.0)
    q = rng.uniform(1.3, 4.0)
    tau = _log_uniform(rng, 15.0, 300.0)
    drift = rng.uniform(0.0, 0.15)
    warmup = 0 if rng.random() < 0.3 else int(rng.uniform(0.02, 0.1) * length)
    schedule = rng.choice(("cosine", "linear", "constant"))
    epochs = rng.choice((1, 1, 2, 3, 4))
    noise = _log_uniform(rng, 0.01, 0.12)
    batch = rng.choice((4, 8, 16, 32))
    r = rng.random()
    osc = "none" if r < 0.4 else ("alternating" if r < 0.6 else "length_ramp")
    if reverse_ramp:
        osc = "reverse_ramp"
    amp = rng.uniform(0.03, 0.2) if osc == "alternating" else rng.uniform(0.03, 0.15)
    period = rng.randint(8, 50)
    fp16 = rng.random() < 0.3

    # Learning rate integrated over steps: the "time" the loss falls in.
    u = 0.0
    us: list[float] = []
    for t in range(1, length + 1):
        if t <= warmup:
            lr = t / warmup
        elif schedule == "constant":
            lr = 1.0
        else:
            frac = (t - warmup) / max(1, length - warmup)
            lr = 1.0 - frac if schedule == "linear" else 0.5 + 0.5 * math.cos(math.pi * frac)
        u += lr
        us.append(u)
    u_total = us[-1]

    per_epoch = length // epochs
    boundaries = [per_epoch * k for k in range(1, epochs)]
    trend: list[float] = []
    step_down = 0.0
    for t in range(1, length + 1):
        if t - 1 in boundaries:
            step_down += math.log(1.0 - rng.uniform(0.05, 0.2))
        ut = us[t - 1]
        trend.append(math.log(final * (1.0 + (q - 1.0) * math.exp(-ut / tau))) - drift * ut / u_total + step_down)

    last_batches = {b: rng.randint(1, batch - 1) for b in boundaries} if batch > 1 else {}
    wiggle: list[float] = []
    phase = rng.randint(0, period - 1)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    for t in range(1, length + 1):
        sd = noise
        rows = last_batches.get(t)  # the step before a boundary ends an epoch
        if rows is not None:
            sd *= math.sqrt(batch / rows)
        if heavy_tails:  # Student-t with 4 degrees of freedom, scaled to the same σ
            w = sd * rng.gauss(0.0, 1.0) / math.sqrt(rng.gammavariate(2.0, 2.0) / 4.0) / math.sqrt(2.0)
        else:
            w = rng.gauss(0.0, sd)
        if osc == "alternating":
            w += amp * sign * (1.0 if t % 2 else -1.0)
        elif osc == "length_ramp":
            frac = ((t + phase) % period) / (period - 1)
            w += amp * (2.0 * frac - 1.0)
        elif osc == "reverse_ramp":
            frac = ((t + phase) % period) / (period - 1)
            w += amp * (1.0 - 2.0 * frac)
        wiggle.append(w)

    g0 = _log_uniform(rng, 0.3, 5.0)
    g_decay = math.log(rng.uniform(1.0, 5.0))
    g_sd = rng.uniform(0.1, 0.35)
    first_nan = rng.randint(0, 6) if fp16 else 0
    log_grad = [
        math.log(g0) - g_decay * (1.0 - math.exp(-us[t - 1] / tau)) + rng.gauss(0.0, g_sd) for t in range(1, length + 1)
    ]
    grad_nan = [fp16 and (t <= first_nan or rng.random() < 0.001) for t in range(1, length + 1)]
    params: dict[str, float | str] = {
        "final": final,
        "q": q,
        "tau": tau,
        "warmup": warmup,
        "schedule": schedule,
        "epochs": epochs,
        "noise": noise,
        "oscillation": osc,
        "amplitude": amp if osc != "none" else 0.0,
        "period": period if osc in ("length_ramp", "reverse_ramp") else 0,
        "fp16": str(fp16),
    }
    return _Parts(trend, wiggle, log_grad, grad_nan, params)


def _assemble(seed: int, parts: _Parts, offsets: list[float], events: list[InjectedEvent], length: int) -> Curve:
    loss = [math.exp(parts.trend[i] + parts.wiggle[i] + offsets[i]) for i in range(length)]
    grad = [math.nan if parts.grad_nan[i] else math.exp(parts.log_grad[i]) for i in range(length)]
    return Curve(seed, loss, grad, events, parts.params)


def clean_curve(seed: int, heavy_tails: bool = False, reverse_ramp: bool = False) -> Curve:
    """A curve with no injected event, 600-4000 steps long.

    Args:
        seed: Everything about the curve follows from it.
        heavy_tails: Stress test: Student-t noise (4 degrees of freedom, same σ) instead
            of normal noise in log space.
        reverse_ramp: Stress test: every curve gets the length-grouped ramp the other way
            round (the loss jumps up at each mega-batch and falls over it), as if longer
            sequences had the higher per-token loss.
    """
    rng = random.Random(seed)
    length = rng.randint(600, 4000)
    parts = _clean_parts(rng, length, heavy_tails, reverse_ramp)
    return _assemble(seed, parts, [0.0] * length, [], length)


def local_sigma(wiggle: list[float], index: int, span: int = 64) -> float:
    """Robust σ (1.4826 x MAD) of the clean log residuals in the ``span`` steps before ``index``."""
    window = sorted(wiggle[max(0, index - span) : index])
    if len(window) < 8:
        window = sorted(wiggle[: max(8, index)])
    mid = window[len(window) // 2]
    dev = sorted(abs(w - mid) for w in window)
    return 1.4826 * dev[len(dev) // 2]


def injected_curve(seed: int) -> Curve:
    """A curve of 1000-4000 steps with labelled events (see the module docstring)."""
    rng = random.Random(seed)
    length = rng.randint(1000, 4000)
    parts = _clean_parts(rng, length)
    offsets = [0.0] * length
    events: list[InjectedEvent] = []

    busy_until = 20  # no spike before step 20 (after the first steps the noise is known)
    if rng.random() < 0.15:
        start = rng.randint(2, 10)
        factor = _log_uniform(rng, 10.0, 25.0)
        decay = rng.randint(20, 100)
        for i in range(start - 1, min(length, start - 1 + decay)):
            offsets[i] = math.log(factor) * (1.0 - (i - (start - 1)) / decay)
        events.append(InjectedEvent(EARLY_JUMP, start, start, start + decay, math.nan, factor))
        busy_until = start + decay + 30

    terminal = rng.random() < 0.5
    term_at = rng.randint(int(0.5 * length), int(0.8 * length)) if terminal else length
    step = busy_until + rng.randint(0, 200)
    while step < term_at - 150:
        sigma = local_sigma(parts.wiggle, step - 1)
        k_max = math.log(MAX_RATIO) / sigma
        k = _log_uniform(rng, MIN_SIGMA, max(MIN_SIGMA, k_max))
        width = 1 if rng.random() < 0.6 else rng.randint(3, 10)
        for i in range(step - 1, step - 1 + width):
            offsets[i] = k * sigma
            if rng.random() < 0.5:
                parts.log_grad[i] += rng.uniform(0.5, 2.5)
        shape = SPIKE if width == 1 else BUMP
        end = step + width - 1
        events.append(InjectedEvent(shape, step, end, end, k, math.exp(k * sigma)))
        step = end + rng.randint(120, 500)

    if terminal:
        kind = rng.choice((DIVERGENCE, DIVERGENCE, NAN, COLLAPSE))
        sigma = local_sigma(parts.wiggle, term_at - 1)
        if kind == DIVERGENCE:
            ramp = rng.randint(50, 200)
            factor = rng.uniform(2.0, 4.0)
            for i in range(term_at - 1, length):
                offsets[i] = math.log(factor) * min(1.0, (i - (term_at - 1)) / ramp)
                parts.log_grad[i] += 0.5 * offsets[i]
            events.append(
                InjectedEvent(DIVERGENCE, term_at, term_at + ramp + 50, length, math.log(factor) / sigma, factor)
            )
        else:
            length = min(length, term_at + 20)
            zero_grad = rng.random() < 0.5
            curve = _assemble(seed, parts, offsets, events, length)
            for i in range(term_at - 1, length):
                if kind == NAN:
                    curve.loss[i] = math.nan
                    curve.grad_norm[i] = math.nan
                else:
                    curve.loss[i] = 0.0
                    curve.grad_norm[i] = 0.0 if zero_grad else math.nan
            curve.events.append(InjectedEvent(kind, term_at, term_at, length, math.nan, math.nan))
            return curve
    return _assemble(seed, parts, offsets, events, length)
