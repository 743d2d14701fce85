"""The loss-spike detector: each rule, and each false-alarm trap of fine-tuning curves.

Every series is hand-built and deterministic (``random.Random(seed)`` for noise).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from loratop.core.events import SPIKE, decode_line, encode, read_events
from loratop.core.spikes import COLLAPSE, GRAD_NORM_SPIKE, LOSS_SPIKE, NON_FINITE, Spike, SpikeDetector

RECORDED = Path(__file__).parent / "data" / "recorded_run" / "events.jsonl"


def feed(
    losses: list[float],
    grads: Sequence[float | None] | None = None,
    detector: SpikeDetector | None = None,
) -> list[Spike]:
    """Run a series through a detector (steps from 1); return the events."""
    detector = detector if detector is not None else SpikeDetector()
    grads = grads if grads is not None else [1.0] * len(losses)
    events = []
    for i, (loss, grad) in enumerate(zip(losses, grads, strict=True)):
        spike = detector.update(i + 1, loss, grad)
        if spike is not None:
            events.append(spike)
    return events


def noisy(n: int, level: float = 2.0, sigma: float = 0.02, seed: int = 0) -> list[float]:
    """A plateau with multiplicative log-normal noise."""
    rng = random.Random(seed)
    return [level * math.exp(rng.gauss(0.0, sigma)) for _ in range(n)]


def fine_tune_curve(n: int, final: float = 1.0, seed: int = 0, sigma: float = 0.03) -> list[float]:
    """A fast initial fall to a plateau (a + b·exp(-t/tau)) with log-normal noise."""
    rng = random.Random(seed)
    return [final * (1.0 + 2.0 * math.exp(-t / 40.0)) * math.exp(rng.gauss(0.0, sigma)) for t in range(n)]


# -- construction ---------------------------------------------------------------


def test_default_is_the_shipped_sensitivity() -> None:
    assert SpikeDetector().sensitivity == 1.0


@pytest.mark.parametrize("bad", [0.0, -1.0, 10.5, math.nan, math.inf])
def test_sensitivity_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="sensitivity"):
        SpikeDetector(sensitivity=bad)


def test_a_step_without_a_loss_is_ignored() -> None:
    detector = SpikeDetector()
    assert detector.update(1, None, None) is None
    assert feed(noisy(50), detector=detector) == []


# -- spikes fire once -------------------------------------------------------------


def test_one_step_spike_fires_once() -> None:
    losses = noisy(200)
    losses[119] *= 1.5  # ~20σ of this noise

    events = feed(losses)

    assert [e.step for e in events] == [120]
    spike = events[0]
    assert (spike.kind, spike.severity) == (LOSS_SPIKE, "warn")
    assert spike.loss == losses[119]
    assert 1.9 < spike.baseline < 2.1
    assert spike.score >= 5.0
    assert spike.reason


def test_multi_step_bump_is_one_event_and_its_recovery_is_quiet() -> None:
    losses = noisy(300)
    for i in range(119, 124):  # a 5-step bump
        losses[i] *= 1.6
    losses[124] *= 1.25  # the recovery: a tail that comes down over a few steps
    losses[125] *= 1.12
    losses[126] *= 1.05

    events = feed(losses)

    assert [e.step for e in events] == [120]


def test_a_rise_of_a_few_sigma_that_stays_is_one_event() -> None:
    # +10% (about 5σ of this noise) that never comes back: like the lr-too-high demo.
    losses = noisy(300, sigma=0.02)
    for i in range(150, 300):
        losses[i] *= 1.1

    events = feed(losses)

    assert len(events) == 1
    assert events[0].kind == LOSS_SPIKE
    assert 151 <= events[0].step <= 156


# -- rules that need no statistics --------------------------------------------------


def test_nan_loss_is_fatal_at_once_and_reported_once() -> None:
    losses = noisy(60) + [math.nan] * 10

    events = feed(losses)

    assert len(events) == 1
    assert (events[0].step, events[0].kind, events[0].severity) == (61, NON_FINITE, "fatal")
    assert math.isnan(events[0].loss)


def test_nan_loss_on_the_first_step_is_fatal() -> None:
    events = feed([math.nan])
    assert [(e.step, e.kind, e.severity) for e in events] == [(1, NON_FINITE, "fatal")]


def test_inf_loss_is_fatal() -> None:
    losses = noisy(40) + [math.inf]

    events = feed(losses)

    assert [(e.step, e.kind, e.severity) for e in events] == [(41, NON_FINITE, "fatal")]


def test_nan_grad_norm_alone_is_routine() -> None:
    # fp16: the grad scaler skips the first few steps while it finds its scale, then an
    # overflow every so often; the loss stays finite.
    n = 400
    grads: list[float | None] = [0.8] * n
    for i in [0, 1, 2, 3, 4, *range(50, n, 37)]:
        grads[i] = math.nan
    grads[200] = math.inf

    assert feed(noisy(n), grads) == []


def test_many_consecutive_nan_grad_norms_are_fatal_once() -> None:
    detector = SpikeDetector()
    patience = detector.nonfinite_grad_patience
    n = 100
    grads = [0.8] * 30 + [math.nan] * (n - 30)

    events = feed(noisy(n), grads, detector)

    assert [(e.step, e.kind, e.severity) for e in events] == [(30 + patience, NON_FINITE, "fatal")]
    assert "in a row" in events[0].reason


@pytest.mark.parametrize("grad", [math.nan, 0.0, None])
def test_collapse_to_zero_is_fatal(grad: float | None) -> None:
    losses = noisy(80) + [0.0] * 5
    grads: list[float | None] = [0.8] * 80
    grads += [grad] * 5

    events = feed(losses, grads)

    assert [(e.step, e.kind, e.severity) for e in events] == [(81, COLLAPSE, "fatal")]


def test_collapse_below_one_in_a_million_is_fatal() -> None:
    events = feed(noisy(30) + [1e-8], [0.8] * 30 + [math.nan])
    assert [(e.step, e.kind) for e in events] == [(31, COLLAPSE)]


def test_gross_jump_during_warm_up_fires() -> None:
    # Too high a learning rate: 20x on step 5, long before any statistics exist.
    losses = [3.0, 2.95, 2.9, 2.88, 58.0, 40.0, 20.0, 9.0, 4.0, 3.0]

    events = feed(losses)

    assert len(events) == 1
    spike = events[0]
    assert (spike.step, spike.kind, spike.severity) == (5, LOSS_SPIKE, "severe")
    assert spike.score == pytest.approx(58.0 / spike.baseline)
    assert spike.score > 19


def test_plateau_after_divergence_is_severe_and_does_not_refire_every_step() -> None:
    rng = random.Random(3)
    healthy = noisy(300, level=1.0, sigma=0.05, seed=3)
    ramp = [1.0 * 3.5 ** (k / 150) * math.exp(rng.gauss(0.0, 0.05)) for k in range(150)]  # slow divergence
    plateau = noisy(600, level=3.5, sigma=0.05, seed=4)  # 3.5x for hundreds of steps

    events = feed(healthy + ramp + plateau)

    severe = [e for e in events if e.severity == "severe"]
    assert severe, events
    assert all(e.kind == LOSS_SPIKE for e in events)
    assert severe[0].step <= 300 + 150 + 50  # before the plateau is old news
    assert max(e.score for e in severe) >= 2.5  # reported as a ratio to the best level
    assert len(events) <= 6  # 750 steps broken: reminders, not one alarm per step
    late = [e for e in events if e.step > 600]
    assert late, "the plateau went quiet"


def test_sudden_jump_to_a_plateau_reports_it_again_only_rarely() -> None:
    losses = noisy(200, level=1.0, sigma=0.03) + noisy(600, level=3.5, sigma=0.03, seed=1)

    events = feed(losses)

    assert events[0].step == 201 and events[0].severity == "severe"
    assert 2 <= len(events) <= 4  # the jump, then a reminder every 200 steps


# -- false-alarm traps of normal fine-tuning ---------------------------------------------


def test_epoch_boundary_step_down_is_quiet() -> None:
    rng = random.Random(5)
    losses = []
    level = 1.2
    for _epoch in range(3):
        for _ in range(300):
            losses.append(level * math.exp(rng.gauss(0.0, 0.03)))
        level *= 0.85  # memorised examples come round again
    assert feed(losses) == []


def test_any_drop_is_quiet() -> None:
    losses = noisy(100) + noisy(100, level=0.6, seed=1)
    assert feed(losses) == []


def test_alternating_length_grouped_batches_are_quiet() -> None:
    rng = random.Random(6)
    losses = [2.0 * (0.8 if t % 2 else 1.2) * math.exp(rng.gauss(0.0, 0.02)) for t in range(1000)]
    assert feed(losses) == []


def test_length_grouped_ramp_is_quiet() -> None:
    # group_by_length: each mega-batch runs from long (low loss) to short (high loss) sequences.
    rng = random.Random(7)
    losses = [1.5 * math.exp(0.12 * (2 * (t % 30) / 29 - 1) + rng.gauss(0.0, 0.02)) for t in range(1500)]
    assert feed(losses) == []


def test_warm_up_fast_fall_is_quiet() -> None:
    assert feed(fine_tune_curve(600, seed=8)) == []
    # With a linear LR warm-up the fall starts late, then runs fast.
    rng = random.Random(9)
    lr_time = [sum(min(1.0, k / 50) for k in range(t + 1)) for t in range(600)]
    losses = [0.5 * (1 + 5 * math.exp(-u / 20)) * math.exp(rng.gauss(0.0, 0.02)) for u in lr_time]
    assert feed(losses) == []


def test_ordinary_noise_is_quiet() -> None:
    for seed in range(5):
        assert feed(noisy(2000, sigma=0.08, seed=seed)) == []


def test_recorded_demo_run_has_no_spike() -> None:
    events, _ = read_events(str(RECORDED))
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) == 60
    detector = SpikeDetector()
    spikes = [detector.update(e["step"], e["loss"], e.get("grad_norm")) for e in steps]
    assert [s for s in spikes if s is not None] == []


# -- heavy-tailed noise ----------------------------------------------------------------


def heavy_tailed(n: int, level: float = 2.0, sigma: float = 0.02, df: float = 3.0, seed: int = 0) -> list[float]:
    """A plateau with multiplicative Student-t noise (``df`` degrees of freedom)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.gauss(0.0, 1.0) / math.sqrt(rng.gammavariate(df / 2.0, 2.0) / df)
        out.append(level * math.exp(sigma * t))
    return out


class _WithoutTailRule(SpikeDetector):
    TAIL_RANK = 10**9  # never enough earlier excursions: the tail rule never holds a spike back


def test_heavy_tailed_noise_raises_the_bar_for_a_one_step_spike() -> None:
    alarms = without = 0
    for seed in range(8):
        losses = heavy_tailed(3000, df=4.0, seed=seed)
        alarms += len(feed(losses))
        without += len(feed(losses, detector=_WithoutTailRule()))
    assert without >= 30  # the noise's own excursions reach the fixed σ threshold often
    assert alarms <= without // 2


def test_a_large_spike_in_heavy_tailed_noise_still_fires() -> None:
    losses = heavy_tailed(3000, seed=7)
    losses[2499] *= 3.0  # a 2.7x jump over its level (gross jumps fire regardless)
    losses[1999] *= 1.8  # ~30 robust σ: far beyond anything the noise did
    steps = [e.step for e in feed(losses)]
    assert 2000 in steps and 2500 in steps


# -- scale and sensitivity ------------------------------------------------------------------


def _scaled_events(scale: float) -> list[tuple[int, str, str, float]]:
    losses = [scale * x for x in fine_tune_curve(800, seed=10)]
    losses[300] *= 1.6
    for i in range(500, 506):
        losses[i] *= 2.0
    return [(e.step, e.kind, e.severity, round(e.score, 6)) for e in feed(losses)]


def test_scale_invariance() -> None:
    reference = _scaled_events(1.0)
    assert [step for step, *_ in reference] == [301, 501]
    assert _scaled_events(0.1) == reference
    assert _scaled_events(10.0) == reference


def test_higher_sensitivity_fires_on_a_smaller_spike() -> None:
    losses = noisy(200, sigma=0.02, seed=11)
    losses[149] = 2.0 * math.exp(0.09)  # ~3.6σ: below the default 4.0σ, above 3.0σ at 2.0

    assert 150 not in [e.step for e in feed(losses)]
    assert 150 in [e.step for e in feed(losses, detector=SpikeDetector(sensitivity=2.0))]


def test_lower_sensitivity_stays_quiet_on_a_moderate_spike() -> None:
    losses = noisy(200, sigma=0.02, seed=12)
    losses[149] = 2.0 * math.exp(0.137)  # ~5.1σ: above the default 4.0σ, below 5.7σ at 0.5

    assert [e.step for e in feed(losses)] == [150]
    assert feed(losses, detector=SpikeDetector(sensitivity=0.5)) == []


# -- grad norm ------------------------------------------------------------------------


def test_grad_norm_spike_alone_is_a_warn() -> None:
    rng = random.Random(13)
    grads: list[float | None] = [0.5 * math.exp(rng.gauss(0.0, 0.2)) for _ in range(200)]
    grads[120] = 6.0

    events = feed(noisy(200, seed=13), grads)

    assert [(e.step, e.kind, e.severity) for e in events] == [(121, GRAD_NORM_SPIKE, "warn")]
    assert events[0].grad_norm == 6.0
    assert 1.9 < events[0].baseline < 2.1  # the loss's recent level
    assert "median 0.5" in events[0].reason  # the grad norm's


def test_loss_spike_with_a_grad_norm_spike_is_severe() -> None:
    rng = random.Random(14)
    grads: list[float | None] = [0.5 * math.exp(rng.gauss(0.0, 0.2)) for _ in range(200)]
    grads[120] = 6.0
    losses = noisy(200, seed=14)
    losses[120] *= 1.5

    events = feed(losses, grads)

    assert [(e.step, e.kind, e.severity) for e in events] == [(121, LOSS_SPIKE, "severe")]


# -- the event it becomes -------------------------------------------------------------------


def test_spike_round_trips_through_the_event_protocol() -> None:
    spike = feed(noisy(60) + [math.nan])[0]

    event = decode_line(encode(0, SPIKE, spike.as_event(), t=1.0))

    assert event is not None
    assert event["kind"] == NON_FINITE and event["severity"] == "fatal" and event["step"] == 61
    assert math.isnan(event["loss"])
    assert set(spike.as_event()) == {"step", "loss", "baseline", "score", "severity", "kind", "reason", "grad_norm"}


# -- a real run -------------------------------------------------------------------------------

# `loratop run sample_configs/tiny-lr-too-high.yaml --no-tui` on 2 CPU cores: the loss falls
# to ~5.8 by step 50, climbs back to ~6.7 by step 68 as the learning rate ramps up, and
# settles on a plateau ~6.3. Rounded per-step loss and grad norm from its events.jsonl.
LR_TOO_HIGH_LOSS = [
    6.9603, 6.9539, 6.9473, 6.9065, 6.8821, 6.8044, 6.7588, 6.689, 6.6583, 6.6128, 6.5894, 6.5936, 6.5722,
    6.5026, 6.6456, 6.4898, 6.483, 6.4154, 6.3927, 6.4189, 6.3758, 6.3554, 6.2716, 6.2505, 6.1996, 6.1297,
    6.1633, 6.1131, 6.0765, 6.1561, 6.0651, 6.0113, 6.0516, 6.0834, 5.9329, 6.0194, 5.9692, 6.0373, 5.9161,
    6.038, 6.0475, 5.9732, 5.9638, 5.8204, 5.8628, 5.7855, 5.9228, 5.7867, 5.7794, 5.9094, 5.9548, 5.753,
    5.938, 5.8627, 5.8773, 5.9912, 6.0416, 5.8778, 5.9668, 6.0521, 6.0584, 6.0433, 6.1488, 6.1171, 6.193,
    6.3673, 6.354, 6.7172, 6.6068, 6.5915, 6.5529, 6.5107, 6.4109, 6.4415, 6.4343, 6.4279, 6.4249, 6.4388,
    6.3702, 6.394, 6.3657, 6.371, 6.3614, 6.3206, 6.3058, 6.3007, 6.2933, 6.3689, 6.2544, 6.3299, 6.3044,
    6.3117, 6.2831, 6.3116, 6.2987, 6.2713, 6.3344, 6.2823, 6.3086, 6.2932, 6.3186, 6.3334, 6.2364, 6.3147,
    6.336, 6.4136, 6.3546, 6.4092, 6.3489, 6.404, 6.3319, 6.3245, 6.336, 6.4313, 6.3259, 6.27, 6.2838,
    6.2637, 6.2853, 6.2595, 6.3165, 6.3136, 6.2454, 6.3009, 6.3081, 6.334, 6.2682, 6.2675, 6.3077, 6.2183,
    6.271, 6.2722, 6.2765, 6.2848, 6.2336, 6.2648, 6.2718, 6.2455, 6.2887, 6.2249, 6.2195, 6.2132, 6.1959,
    6.3026, 6.2458, 6.2169, 6.2365, 6.2229, 6.2696, 6.2632, 6.2731, 6.2679, 6.2165, 6.2892, 6.3684, 6.2815,
    6.2222, 6.2939, 6.2911, 6.2798, 6.2695, 6.3591, 6.3556, 6.3252, 6.3206, 6.3594, 6.3319, 6.2942, 6.2459,
    6.3176, 6.2939, 6.2978, 6.2549, 6.2655, 6.2546, 6.2905, 6.2229, 6.2459, 6.2049, 6.2244, 6.3482, 6.2716,
    6.2437, 6.316, 6.3823, 6.3164, 6.2861, 6.3474, 6.2957, 6.3286, 6.3314, 6.3868, 6.2897, 6.3164, 6.3062,
    6.3267, 6.3706, 6.2943, 6.3319, 6.3258,
]  # fmt: skip
LR_TOO_HIGH_GRAD: list[float | None] = [
    0.742, 0.672, 0.555, 0.75, 0.738, 0.734, 0.543, 0.539, 0.463, 0.396, 0.318, 0.309, 0.334, 0.586, 4.781,
    0.447, 0.424, 0.539, 1.172, 0.676, 0.836, 1.328, 0.762, 0.428, 0.363, 0.508, 0.445, 0.57, 0.75, 1.047,
    0.699, 0.516, 0.602, 0.52, 0.48, 0.84, 0.875, 0.805, 0.459, 0.404, 0.715, 0.641, 0.57, 0.5, 0.465, 0.629,
    0.867, 0.668, 0.824, 0.535, 0.82, 0.766, 0.512, 1.578, 0.754, 0.824, 1.523, 1.461, 1.031, 1.445, 1.094,
    1.602, 1.992, 2.156, 6.094, 1.805, 3.688, 0.715, 1.031, 1.008, 0.871, 0.547, 0.598, 0.812, 0.621, 0.602,
    0.42, 0.586, 0.277, 0.305, 0.352, 0.381, 0.314, 0.314, 1.039, 0.328, 0.328, 0.195, 0.465, 0.212, 0.453,
    5.312, 0.492, 0.249, 1.406, 1.008, 0.312, 5.906, 0.77, 2.891, 0.863, 1.219, 0.469, 0.777, 0.676, 0.699,
    0.365, 0.676, 1.32, 0.293, 0.445, 0.264, 0.225, 0.516, 0.262, 0.66, 0.266, 0.111, 0.141, 0.629, 1.531,
    0.19, 0.131, 0.326, 0.124, 0.115, 0.551, 0.111, 0.124, 0.598, 0.219, 0.258, 0.467, 0.262, 0.136, 0.387,
    0.202, 0.412, 0.727, 0.146, 4.281, 0.16, 0.144, 2.344, 0.848, 1.922, 1.602, 0.969, 0.625, 0.281, 0.531,
    1.242, 1.078, 0.938, 0.52, 0.324, 7.156, 0.406, 0.723, 0.203, 1.859, 0.418, 0.228, 0.27, 0.201, 0.465,
    0.211, 1.047, 0.146, 1.898, 2.641, 0.18, 0.664, 0.914, 0.432, 1.227, 0.574, 2.234, 0.199, 0.121, 0.26,
    0.199, 0.941, 0.334, 0.652, 0.227, 0.342, 0.26, 12.188, 1.133, 0.155, 0.144, 0.229, 5.25, 0.57, 0.26,
    0.283, 0.801, 0.194, 1.633,
]  # fmt: skip


def test_recorded_lr_too_high_run_is_flagged() -> None:
    events = feed(LR_TOO_HIGH_LOSS, LR_TOO_HIGH_GRAD)

    loss_spikes = [e for e in events if e.kind == LOSS_SPIKE]
    assert loss_spikes, events
    assert 60 <= loss_spikes[0].step <= 75  # the climb back to ~6.7
    assert len(events) <= 3


def test_a_long_quiet_run_keeps_only_recent_excursions() -> None:
    rng = random.Random(21)
    clipped = [2.0 * math.exp(0.02 * max(-2.5, min(2.5, rng.gauss(0.0, 1.0)))) for _ in range(20_000)]
    detector = SpikeDetector()
    assert feed(clipped, detector=detector) == []  # no candidate ever prunes on its own
    assert 0 < len(detector._tail) < SpikeDetector.TAIL_STEPS // 10
    assert 0 < len(detector._edges) < SpikeDetector.NOVELTY_STEPS // 5
