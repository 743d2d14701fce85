"""A second family of labelled loss curves, drawn differently from ``curves.py`` (family A).

The detector's thresholds were tuned on family A. Family B exists to say how far that
tuning carries to curves drawn another way, so it must never be tuned on. It differs in
every part the issue names:

- **noise**: heavy-tailed in every curve (Student-t, 3 to 8 degrees of freedom, scaled to a
  σ log-uniform in [0.01, 0.10]), plus in 40% of curves a slowly varying noise level (the
  σ doubles and halves again over a few hundred steps, as when batch composition drifts);
- **data-order bumps**: the same few hard batches at the same place in every epoch (2-6 of
  them, 1.5-3σ each), which a detector sees again each epoch;
- **warm-up transients**: in 40% of curves the loss first rises (5-40% over 3-30 steps)
  before it falls, as with a too-fast warm-up or a freshly initialised head;
- **slow drifts**: in 30% of curves the loss creeps up by 5-25% over the last half, without
  diverging;
- **events** (labelled): one-step spikes with a decaying tail (the next 2-8 steps still
  high, as Adam's state recovers), plateau bumps of 3-12 steps, **clusters** of 2-5 spikes
  within 4-30 steps (one event: a detector that flags it once has seen it), an exponential
  divergence, and NaN loss. Spike and bump sizes are log-uniform from 5σ of the local noise
  up to a 15x jump.

Every curve is a pure function of its seed; the seeds are far from family A's.
"""

from __future__ import annotations

import math
import random

from curves import BUMP, DIVERGENCE, NAN, SPIKE, Curve, InjectedEvent, _log_uniform, local_sigma

CLUSTER = "cluster"
SHAPES_B = (SPIKE, BUMP, CLUSTER, DIVERGENCE, NAN)
MIN_SIGMA_B = 5.0
MAX_RATIO_B = 15.0
SEED_BASE = 50_000_000
"""Family B's seeds start here: never a family A seed."""


def _student_t(rng: random.Random, df: float) -> float:
    """A Student-t draw scaled to unit variance (df > 2)."""
    z = rng.gauss(0.0, 1.0)
    chi2 = rng.gammavariate(df / 2.0, 2.0)
    return z / math.sqrt(chi2 / df) / math.sqrt(df / (df - 2.0))


def _clean_b(rng: random.Random, length: int) -> tuple[list[float], list[float], list[float], dict[str, float | str]]:
    """Trend, wiggle (noise and oscillation, log) and log grad norm of one clean family-B curve."""
    final = _log_uniform(rng, 0.4, 2.5)
    q = rng.uniform(1.5, 5.0)
    tau = _log_uniform(rng, 20.0, 400.0)
    epochs = rng.choice((1, 2, 2, 3))
    per_epoch = max(1, length // epochs)
    sigma = _log_uniform(rng, 0.01, 0.10)
    df = rng.uniform(3.0, 8.0)
    varying = rng.random() < 0.4
    transient = rng.random() < 0.4
    drift = rng.uniform(0.05, 0.25) if rng.random() < 0.3 else 0.0
    rise = rng.uniform(0.05, 0.4) if transient else 0.0
    rise_steps = rng.randint(3, 30)
    hard = sorted(rng.sample(range(per_epoch), k=min(per_epoch, rng.randint(2, 6))))
    hard_size = {h: rng.uniform(1.5, 3.0) for h in hard}
    wave = rng.uniform(150.0, 600.0)
    trend, wiggle, grad = [], [], []
    g0 = _log_uniform(rng, 0.3, 5.0)
    for t in range(1, length + 1):
        value = math.log(final * (1.0 + (q - 1.0) * math.exp(-t / tau)))
        if transient and t <= 2 * rise_steps:  # up, then back down, on top of the fall
            value += math.log(1.0 + rise) * math.sin(math.pi * t / (2 * rise_steps))
        if drift and t > length // 2:
            value += math.log(1.0 + drift) * (t - length // 2) / (length - length // 2)
        value += math.log(1.0 - 0.08) * ((t - 1) // per_epoch)  # each new epoch a little lower
        trend.append(value)
        sd = sigma * (1.0 + 0.5 * math.sin(2 * math.pi * t / wave)) if varying else sigma
        w = sd * _student_t(rng, df)
        position = (t - 1) % per_epoch
        if position in hard_size:
            w += hard_size[position] * sigma
        wiggle.append(w)
        grad.append(math.log(g0) - 0.5 * (1.0 - math.exp(-t / tau)) + rng.gauss(0.0, 0.2))
    params: dict[str, float | str] = {
        "final": final, "tau": tau, "epochs": epochs, "sigma": sigma, "df": df, "varying_noise": str(varying),
        "transient": rise, "drift": drift, "hard_batches": len(hard),
    }  # fmt: skip
    return trend, wiggle, grad, params


def clean_curve_b(seed: int) -> Curve:
    """A family-B curve without events, 800-4000 steps."""
    rng = random.Random(SEED_BASE + seed)
    length = rng.randint(800, 4000)
    trend, wiggle, grad, params = _clean_b(rng, length)
    loss = [math.exp(a + b) for a, b in zip(trend, wiggle, strict=True)]
    return Curve(seed, loss, [math.exp(g) for g in grad], [], params)


def injected_curve_b(seed: int) -> Curve:
    """A family-B curve, 1000-4000 steps, with labelled events (see the module docstring)."""
    rng = random.Random(SEED_BASE + 7_000_000 + seed)
    length = rng.randint(1000, 4000)
    trend, wiggle, grad, params = _clean_b(rng, length)
    offsets = [0.0] * length
    events: list[InjectedEvent] = []
    terminal = rng.random() < 0.35
    term_at = rng.randint(int(0.55 * length), int(0.85 * length)) if terminal else length
    step = 80 + rng.randint(0, 250)  # after the warm-up transient
    while step < term_at - 150:
        sigma = local_sigma(wiggle, step - 1)
        k = _log_uniform(rng, MIN_SIGMA_B, max(MIN_SIGMA_B, math.log(MAX_RATIO_B) / sigma))
        kind = rng.choices((SPIKE, BUMP, CLUSTER), weights=(5, 3, 2))[0]
        if kind == SPIKE:
            tail = rng.randint(2, 8)
            for j in range(tail + 1):
                offsets[step - 1 + j] = k * sigma * math.exp(-1.2 * j)
            events.append(InjectedEvent(SPIKE, step, step, step + tail, k, math.exp(k * sigma)))
            end = step + tail
        elif kind == BUMP:
            width = rng.randint(3, 12)
            for i in range(step - 1, step - 1 + width):
                offsets[i] = k * sigma
            end = step + width - 1
            events.append(InjectedEvent(BUMP, step, end, end, k, math.exp(k * sigma)))
        else:
            spikes = rng.randint(2, 5)
            span = rng.randint(4, 30)
            at = sorted(rng.sample(range(span), k=min(span, spikes)))
            for a in at:
                size = k * rng.uniform(0.7, 1.0)
                offsets[step - 1 + a] = max(offsets[step - 1 + a], size * sigma)
            end = step + at[-1]
            events.append(InjectedEvent(CLUSTER, step, end, end, k, math.exp(k * sigma)))
        step = end + rng.randint(120, 450)
    if terminal:
        sigma = local_sigma(wiggle, term_at - 1)
        if rng.random() < 0.7:
            growth = rng.uniform(0.01, 0.04)  # exponential: slow at first, then fast
            top = math.log(rng.uniform(2.0, 5.0))
            ramp_end = length
            for i in range(term_at - 1, length):
                offsets[i] = min(top, math.expm1(growth * (i - (term_at - 1))) * 0.05)
                if offsets[i] >= top and ramp_end == length:
                    ramp_end = i + 1
            end = min(length, ramp_end + 50)
            events.append(InjectedEvent(DIVERGENCE, term_at, end, length, top / sigma, math.exp(top)))
        else:
            length = min(length, term_at + 20)
            loss = [math.exp(trend[i] + wiggle[i] + offsets[i]) for i in range(length)]
            grads = [math.exp(grad[i]) for i in range(length)]
            for i in range(term_at - 1, length):
                loss[i] = math.nan
                grads[i] = math.nan
            events.append(InjectedEvent(NAN, term_at, term_at, length, math.nan, math.nan))
            return Curve(seed, loss, grads, events, params)
    loss = [math.exp(trend[i] + wiggle[i] + offsets[i]) for i in range(length)]
    return Curve(seed, loss, [math.exp(g) for g in grad], events, params)
