"""Precision, recall and false alarms of loratop's spike detector against two baselines.

    time python benchmarks/spikes/evaluate.py        # the tables in RESULTS.md (~30 s on 2 cores)
    python benchmarks/spikes/evaluate.py --held-out  # the same on seeds never used for tuning
    python benchmarks/spikes/evaluate.py --quick     # a quarter of the curves
    python benchmarks/spikes/evaluate.py --family b  # curves drawn another way (curves_b.py), never tuned on

Every detector sees the same synthetic curves (``curves.py``, fixed seeds), step by step,
with each step's loss and grad norm:

- **Injected curves**: events of six shapes, each with a labelled window. An event is
  detected by the first alarm in ``start .. end + TOLERANCE`` (5 steps); one alarm
  detects at most one event. Only loss alarms detect (for loratop: kinds ``loss_spike``,
  ``non_finite``, ``collapse``; a ``grad_norm_spike`` warn never counts as a detection).
  Any other alarm up to ``affected_end + TOLERANCE`` of an event is a duplicate about the
  same problem (a reminder that a plateau persists, a grad-norm warn inside a bump):
  counted per event, not as a false alarm. Every other alarm, of any kind, is a false
  positive. Precision = detections / (detections + false positives).
- **Clean curves** totalling at least 1,000,000 steps: every alarm is a false alarm.
- **Stress sets** (clean, 250,000 steps each), outside the targets: Student-t noise
  with 4 degrees of freedom instead of normal noise; and the length-grouped ramp the
  other way round (the loss jumps up at the start of every mega-batch).

Detectors:

- ``loratop``: ``SpikeDetector(sensitivity)``; every event it returns, of any kind or
  severity, is an alarm. Default 1.0, and the knob at 0.5 and 2.0.
- ``fixed 1.5x mean-100``: the common watchdog rule: loss > 1.5 x the mean of the
  previous 100 finite losses (as many as there are before step 100), or a non-finite
  loss. It alarms on the first step of each run of flagged steps.
- ``Megatron 10x max``: loss > 10 x the largest previous finite loss (Megatron-LM's
  spiky-loss check), or a non-finite loss (its NaN check); first step of each run.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `trainer`
sys.path.insert(0, str(Path(__file__).resolve().parent))

from curves import BUMP, SHAPES, SPIKE, Curve, clean_curve, injected_curve  # noqa: E402
from curves_b import CLUSTER, SHAPES_B, clean_curve_b, injected_curve_b  # noqa: E402

from loratop.core.spikes import GRAD_NORM_SPIKE, SpikeDetector  # noqa: E402

TOLERANCE = 5
"""Steps after a labelled window in which an alarm still detects the event."""
INJECTED_CURVES = 400
CLEAN_STEPS = 1_000_000
STRESS_STEPS = 250_000
SIZE_BUCKETS = ((4.0, 6.0), (6.0, 10.0), (10.0, math.inf))
CLEAN_SEED = 1_000_000
HEAVY_SEED = 2_000_000
REVERSE_SEED = 3_000_000
HELD_OUT_SHIFT = 10_000_000
"""``--held-out`` adds this to every seed: curves the thresholds were never tuned on."""

Alarm = tuple[int, bool]
"""(step, whether it is a loss alarm that may detect an event)."""


class Loratop:
    """loratop's detector: every event is an alarm; grad-norm warns cannot detect."""

    def __init__(self, sensitivity: float = 1.0) -> None:
        self._detector = SpikeDetector(sensitivity=sensitivity)

    def update(self, step: int, loss: float, grad_norm: float | None) -> Alarm | None:
        spike = self._detector.update(step, loss, grad_norm)
        if spike is None:
            return None
        return step, spike.kind != GRAD_NORM_SPIKE


class FixedThreshold:
    """Loss > ratio x the mean of the previous ``window`` finite losses, or non-finite."""

    def __init__(self, ratio: float = 1.5, window: int = 100) -> None:
        self._ratio = ratio
        self._window: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self._flagged = False

    def update(self, step: int, loss: float, grad_norm: float | None) -> Alarm | None:
        if not math.isfinite(loss):
            flagged = True
        else:
            flagged = bool(self._window) and loss > self._ratio * self._sum / len(self._window)
            if len(self._window) == self._window.maxlen:
                self._sum -= self._window[0]
            self._window.append(loss)
            self._sum += loss
        alarm = flagged and not self._flagged
        self._flagged = flagged
        return (step, True) if alarm else None


class MegatronMax:
    """Loss > factor x the largest previous finite loss, or non-finite."""

    def __init__(self, factor: float = 10.0) -> None:
        self._factor = factor
        self._max = -math.inf
        self._flagged = False

    def update(self, step: int, loss: float, grad_norm: float | None) -> Alarm | None:
        if not math.isfinite(loss):
            flagged = True
        else:
            flagged = self._max > 0 and loss > self._factor * self._max
            self._max = max(self._max, loss)
        alarm = flagged and not self._flagged
        self._flagged = flagged
        return (step, True) if alarm else None


Detector = Loratop | FixedThreshold | MegatronMax

DETECTORS: tuple[tuple[str, Callable[[], Detector]], ...] = (
    ("loratop (default, sensitivity 1.0)", Loratop),
    ("loratop, sensitivity 0.5", lambda: Loratop(0.5)),
    ("loratop, sensitivity 2.0", lambda: Loratop(2.0)),
    ("fixed 1.5x mean-100", FixedThreshold),
    ("Megatron 10x max", MegatronMax),
)


def _alarms(detector: Detector, curve: Curve) -> list[Alarm]:
    update = detector.update
    grads = curve.grad_norm
    out = []
    for i, loss in enumerate(curve.loss):
        alarm = update(i + 1, loss, grads[i])
        if alarm is not None:
            out.append(alarm)
    return out


@dataclass
class CurveScore:
    """One detector on one injected curve."""

    events: list[tuple[str, float]]  # (shape, size in σ)
    detected: list[bool]
    false_pos: int
    duplicates: int


def _df(curve: Curve) -> float:
    """A family-B curve's Student-t degrees of freedom (NaN for family A)."""
    df = curve.params.get("df", math.nan)
    return float(df) if isinstance(df, (int, float)) else math.nan


def _score_injected(args: tuple[int, str]) -> tuple[int, list[CurveScore], float]:
    seed, family = args
    curve = injected_curve(seed) if family == "a" else injected_curve_b(seed)
    scores = []
    for _, make in DETECTORS:
        alarms = _alarms(make(), curve)
        used: set[int] = set()
        detected = []
        for event in curve.events:
            hit = next(
                (
                    step
                    for step, is_loss in alarms
                    if is_loss and step not in used and event.start <= step <= event.end + TOLERANCE
                ),
                None,
            )
            if hit is not None:
                used.add(hit)
            detected.append(hit is not None)
        duplicates = false_pos = 0
        for step, _ in alarms:
            if step in used:
                continue
            if any(e.start <= step <= e.affected_end + TOLERANCE for e in curve.events):
                duplicates += 1
            else:
                false_pos += 1
        events = [(e.shape, e.size_sigma) for e in curve.events]
        scores.append(CurveScore(events, detected, false_pos, duplicates))
    return len(curve.loss), scores, _df(curve)


def _score_clean(args: tuple[int, bool, bool, str]) -> tuple[int, list[int], float]:
    seed, heavy_tails, reverse_ramp, family = args
    if family == "b":
        curve = clean_curve_b(seed)
    else:
        curve = clean_curve(seed, heavy_tails=heavy_tails, reverse_ramp=reverse_ramp)
    return len(curve.loss), [len(_alarms(make(), curve)) for _, make in DETECTORS], _df(curve)


NOISE_BUCKETS = ((3.0, 4.0), (4.0, 6.0), (6.0, 8.0))
"""Family B's Student-t degrees of freedom, grouped for the split by noise."""


def _bucket(df: float) -> int | None:
    return next((i for i, (lo, hi) in enumerate(NOISE_BUCKETS) if lo <= df < hi or df == hi == 8.0), None)


def _clean_run(
    pool: ProcessPoolExecutor,
    first_seed: int,
    target: int,
    heavy: bool,
    reverse: bool,
    family: str = "a",
    by_noise: list[list[int]] | None = None,
) -> list[float]:
    """False alarms per 10k steps, per detector, over clean curves totalling >= target steps.

    ``by_noise``, when given, gets [steps, default detector's alarms] per noise bucket added.
    """
    steps = 0
    alarms = [0] * len(DETECTORS)
    seed = first_seed
    while steps < target:
        batch = [(s, heavy, reverse, family) for s in range(seed, seed + 64)]
        seed += 64
        for n, per_detector, df in pool.map(_score_clean, batch, chunksize=4):
            steps += n
            alarms = [a + b for a, b in zip(alarms, per_detector, strict=True)]
            b = _bucket(df)
            if by_noise is not None and b is not None:
                by_noise[b][0] += n
                by_noise[b][1] += per_detector[0]
    return [a * 10_000 / steps for a in alarms] + [float(steps)]


def _ratio(num: int, den: int) -> str:
    return f"{num / den:.3f}" if den else "n/a"


def _table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _noise_table(
    injected: list[tuple[int, list[CurveScore], float]], clean_by_noise: list[list[int]], sized: tuple[str, ...]
) -> str:
    """The default detector on family B, split by the curves' Student-t degrees of freedom."""
    rows = []
    for b, (lo, hi) in enumerate(NOISE_BUCKETS):
        hits = [[0, 0], [0, 0]]  # all sized events, those >= 10σ
        for _, scores, df in injected:
            if _bucket(df) != b:
                continue
            score = scores[0]
            for (shape, size), ok in zip(score.events, score.detected, strict=True):
                if shape in sized:
                    hits[0][0] += ok
                    hits[0][1] += 1
                    if size >= 10.0:
                        hits[1][0] += ok
                        hits[1][1] += 1
        steps, alarms = clean_by_noise[b]
        rows.append(
            [
                f"Student-t, {lo:g}–{hi:g} df ({steps:,} clean steps)",
                f"{alarms * 10_000 / steps:.2f}" if steps else "n/a",
                _ratio(*hits[0]),
                _ratio(*hits[1]),
            ]
        )
    return _table(["loratop (default), by noise", "false alarms / 10k clean steps", "recall ≥5σ", "recall ≥10σ"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the curves")
    parser.add_argument("--held-out", action="store_true", help="other seeds than the ones the detector was tuned on")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--family", choices=("a", "b"), default="a", help="a: curves.py (tuned on); b: curves_b.py")
    args = parser.parse_args()
    family = args.family
    shape_list = SHAPES if family == "a" else SHAPES_B
    sized_shapes = (SPIKE, BUMP) if family == "a" else (SPIKE, BUMP, CLUSTER)
    part = 4 if args.quick else 1
    shift = HELD_OUT_SHIFT if args.held_out else 0

    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        seeds = [(s, family) for s in range(shift, shift + INJECTED_CURVES // part)]
        injected = list(pool.map(_score_injected, seeds, chunksize=8))
        clean_by_noise = [[0, 0] for _ in NOISE_BUCKETS]
        clean = _clean_run(pool, shift + CLEAN_SEED, CLEAN_STEPS // part, False, False, family, clean_by_noise)
        if family == "a":
            heavy = _clean_run(pool, shift + HEAVY_SEED, STRESS_STEPS // part, True, False)
            reverse = _clean_run(pool, shift + REVERSE_SEED, STRESS_STEPS // part, False, True)
        else:  # heavy tails are in every family-B curve already
            heavy = reverse = [math.nan] * (len(DETECTORS) + 1)
    elapsed = time.perf_counter() - started

    n_events = dict.fromkeys(shape_list, 0)
    for _, scores, _ in injected:
        for shape, _ in scores[0].events:
            n_events[shape] += 1
    n_total = sum(n_events.values())
    injected_steps = sum(n for n, _, _ in injected)
    shapes = [s for s in shape_list if n_events[s]]

    main_rows, bucket_rows, stress_rows = [], [], []
    for d, (name, _) in enumerate(DETECTORS):
        hits = dict.fromkeys(shape_list, 0)
        sized = [0, 0]
        buckets = [[0, 0] for _ in SIZE_BUCKETS]
        tp = fp = dup = 0
        for _, scores, _ in injected:
            score = scores[d]
            for (shape, size), ok in zip(score.events, score.detected, strict=True):
                hits[shape] += ok
                tp += ok
                if shape in sized_shapes:
                    sized[0] += ok
                    sized[1] += 1
                    for b, (lo, hi) in enumerate(SIZE_BUCKETS):
                        if lo <= size < hi:
                            buckets[b][0] += ok
                            buckets[b][1] += 1
            fp += score.false_pos
            dup += score.duplicates
        main_rows.append(
            [name, _ratio(sized[0], sized[1]), _ratio(tp, tp + fp)]
            + [_ratio(hits[s], n_events[s]) for s in shapes]
            + [f"{dup / n_total:.2f}", f"{clean[d]:.2f}"]
        )
        bucket_rows.append([name] + [_ratio(h, n) for h, n in buckets])
        stress_rows.append([name, f"{heavy[d]:.2f}", f"{reverse[d]:.2f}"])

    print(
        _table(
            [
                "detector",
                "recall, spikes+bumps ≥4σ" if family == "a" else "recall, spikes+bumps+clusters ≥5σ",
                "precision",
            ]
            + [f"recall {s}" for s in shapes]
            + ["duplicates / event", "false alarms / 10k clean steps"],
            main_rows,
        )
    )
    print()
    print(
        _table(
            ["detector"]
            + [f"recall {lo:g}–{hi:g}σ" if math.isfinite(hi) else f"recall ≥{lo:g}σ" for lo, hi in SIZE_BUCKETS],
            bucket_rows,
        )
    )
    print()
    if family == "a":
        print(
            _table(
                ["detector", "false alarms / 10k: Student-t(4) noise", "false alarms / 10k: reversed length ramp"],
                stress_rows,
            )
        )
        print()
    if family == "b":
        print(_noise_table(injected, clean_by_noise, sized_shapes))
        print()
    counts = ", ".join(f"{n_events[s]} {s}" for s in shapes)
    seeds = {"b": "never tuned on"}.get(family, "held-out seeds" if args.held_out else "tuning seeds")
    stress = f"; stress sets {int(heavy[-1]):,} and {int(reverse[-1]):,} steps" if family == "a" else ""
    print(
        f"family {family}, {seeds}: {len(injected)} injected curves ({injected_steps:,} steps; {counts}); "
        f"{int(clean[-1]):,} clean steps{stress}; {elapsed:.1f} s on {args.workers} workers."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
