"""Min/max downsampling and the NaN-tolerant EMA behind the loss chart (pure functions)."""

from __future__ import annotations

import array
import math
import random

import pytest

from loratop.widgets.downsample import downsample, ema


def _brute_force(xs: list[float], ys: list[float], buckets: int) -> tuple[list[float], list[float]]:
    """The definition, written the slow and obvious way."""
    n = min(len(xs), len(ys))
    finite = [i for i in range(n) if math.isfinite(xs[i]) and math.isfinite(ys[i])]
    if n <= 2 * buckets:
        return [xs[i] for i in finite], [ys[i] for i in finite]
    out_x: list[float] = []
    out_y: list[float] = []
    for bucket in range(buckets):
        start, end = bucket * n // buckets, (bucket + 1) * n // buckets
        kept = [i for i in range(start, end) if math.isfinite(ys[i])]
        if not kept:
            continue
        low = min(kept, key=lambda i: (ys[i], i))
        high = max(kept, key=lambda i: (ys[i], -i))
        for i in sorted({low, high}):
            if math.isfinite(xs[i]):
                out_x.append(xs[i])
                out_y.append(ys[i])
    return out_x, out_y


def test_a_short_series_comes_back_unchanged() -> None:
    xs = [1.0, 2.0, 3.0, 4.0]
    ys = [2.5, 2.4, 2.6, 2.1]

    assert downsample(xs, ys, buckets=2) == (xs, ys)
    assert downsample([], [], buckets=5) == ([], [])


def test_a_million_points_reduce_to_at_most_two_per_bucket() -> None:
    n = 1_000_000
    xs = array.array("d", range(n))
    ys = array.array("d", (math.sin(i / 5000) for i in range(n)))

    out_x, out_y = downsample(xs, ys, buckets=150)

    assert 150 <= len(out_x) <= 300
    assert len(out_x) == len(out_y)
    assert out_x[0] < 5000 and out_x[-1] > n - 5000


def test_a_single_spike_in_a_long_series_survives() -> None:
    n = 100_000
    random.seed(7)
    xs = list(range(n))
    ys = [2.0 + 0.01 * random.random() for _ in range(n)]
    ys[61_234] = 50.0

    out_x, out_y = downsample(xs, ys, buckets=70)

    assert max(out_y) == 50.0
    assert out_x[out_y.index(50.0)] == 61_234


def test_non_finite_values_are_dropped_short_and_long() -> None:
    short_y = [1.0, math.nan, 3.0, math.inf, -math.inf, 2.0]
    assert downsample(list(range(6)), short_y, buckets=10) == ([0, 2, 5], [1.0, 3.0, 2.0])

    n = 10_000
    ys = [float(i % 7) for i in range(n)]
    for i in range(0, n, 3):
        ys[i] = math.nan
    ys[500:1500] = [math.nan] * 1000  # a whole bucket (or more) with nothing finite

    out_x, out_y = downsample(list(range(n)), ys, buckets=20)

    assert out_y and all(math.isfinite(y) for y in out_y)
    assert not any(500 <= x < 1500 for x in out_x)


def test_x_order_is_preserved() -> None:
    random.seed(3)
    n = 50_000
    xs = [i * 0.5 for i in range(n)]
    ys = [random.gauss(0, 1) for _ in range(n)]

    out_x, _ = downsample(xs, ys, buckets=97)

    assert out_x == sorted(out_x)
    assert len(set(out_x)) == len(out_x)


def test_matches_the_definition_on_random_series() -> None:
    random.seed(11)
    choices = [math.nan, math.inf, -math.inf, 1e308, 0.0, -1.0]
    for _ in range(300):
        n = random.randint(0, 300)
        buckets = random.randint(1, 40)
        xs = [float(i) for i in range(n)]
        ys = [random.choice(choices) if random.random() < 0.1 else random.random() for _ in range(n)]

        assert downsample(xs, ys, buckets) == _brute_force(xs, ys, buckets), (n, buckets)


def test_unequal_lengths_use_the_common_prefix() -> None:
    assert downsample([0, 1, 2, 3], [5.0, 6.0], buckets=4) == ([0, 1], [5.0, 6.0])


def test_buckets_must_be_positive() -> None:
    with pytest.raises(ValueError, match="buckets"):
        downsample([1.0], [1.0], buckets=0)


def test_ema_smooths_from_the_first_value() -> None:
    assert ema([], 0.5) == []
    assert ema([4.0, 2.0, 2.0], 0.5) == [4.0, 3.0, 2.5]
    assert ema([1.0, 5.0], 1.0) == [1.0, 5.0]


def test_ema_carries_over_non_finite_values_and_is_nan_before_the_first_finite_one() -> None:
    out = ema([math.nan, math.inf, 4.0, math.nan, 2.0, -math.inf], 0.5)

    assert math.isnan(out[0]) and math.isnan(out[1])
    assert out[2:] == [4.0, 4.0, 3.0, 3.0]


def test_ema_rejects_an_alpha_outside_zero_to_one() -> None:
    for alpha in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            ema([1.0], alpha)


def test_running_ema_matches_ema_however_the_series_grows() -> None:
    import math

    from loratop.widgets.downsample import RunningEma, ema

    series = [3.0, math.nan, 2.5, 2.0, math.inf, 1.0, 1.5, 0.5]
    running = RunningEma(0.3)
    for end in (0, 1, 2, 2, 5, 8):
        running.extend(series[:end])
    expected = ema(series, 0.3)
    got = list(running.values)
    assert len(got) == len(expected)
    assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got, expected, strict=True))


def test_a_planned_span_keeps_the_runs_in_place_as_points_are_appended() -> None:
    """With ``span``, appending points changes only the run they fall in: the chart's older
    columns stay as they are (and are not sent to the terminal again)."""
    rng = random.Random(3)
    ys = [rng.random() for _ in range(5000)]
    xs = [float(i + 1) for i in range(5000)]
    buckets, span = 50, 10_000  # 200 points a run
    before = downsample(xs[:3150], ys[:3150], buckets, span)
    after = downsample(xs[:3199], ys[:3199], buckets, span)
    done = [i for i, x in enumerate(before[0]) if x <= 3000]  # the runs of steps 1..3000 are complete
    assert [before[0][i] for i in done] == after[0][: len(done)]
    assert [before[1][i] for i in done] == after[1][: len(done)]
    assert max(after[0]) <= 3199 and len(after[0]) <= 2 * 16
    # Without a span the runs shift with every point: the old columns change.
    plain_before, plain_after = downsample(xs[:3150], ys[:3150], buckets), downsample(xs[:3199], ys[:3199], buckets)
    assert plain_before[0][:10] != plain_after[0][:10]
    # The full span reduces exactly as a series that long does.
    assert downsample(xs, ys, 25, 5000) == downsample(xs, ys, 25)
