"""``loratop fit``'s plan and verdict: which (micro-batch, sequence length, checkpointing)
points to probe, how to keep the probe within its time budget, and which candidate to recommend.

Pure Python, no torch: the probe (``trainer.fit_probe``) runs the points and hands back what
it measured; this module chooses the points, fits peak memory against padded tokens with the
OOM forecast's own model (:func:`core.oom_forecast.fit_peaks`: ``peak ≈ base + per_token ×
tokens``, an upper envelope), predicts every candidate's peak and headroom against the memory
torch can have, and recommends the fastest *measured* candidate that keeps the headroom, with
gradient accumulation chosen so the effective batch stays the config's.

An out-of-memory error at a point is a data point (its tokens are above the limit), never the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from loratop.core.oom_forecast import Fit, fit_peaks
from loratop.preflight.config_rewrite import rewrite_config

GIB = 1024**3

MAX_MICRO_BATCH = 64
"""The largest micro-batch a candidate may have."""
STEPS = 3
"""Optimizer steps at each point; the first warms up (kernels, allocator) and is not timed."""
DEFAULT_BUDGET_S = 90.0
DEFAULT_HEADROOM = 0.10
FAKE_MEMORY_ENV = "LORATOP_FIT_FAKE_MEMORY"
"""A test fake, for CPU tests only: ``base_bytes,per_token_bytes,total_bytes`` makes the probe
report peak = base + per_token × tokens (and an out-of-memory error above total) instead of
reading torch.cuda. Never set it to size a real run."""
NO_GPU_LINE = "loratop fit needs an NVIDIA GPU (none here); the formula's view: loratop estimate {config}"
"""The refusal on a box without an NVIDIA GPU (and without the test fake)."""


@dataclass(frozen=True, order=True)
class Point:
    """One (micro-batch, sequence length, gradient checkpointing) setting."""

    micro_batch: int
    seq_len: int
    grad_ckpt: bool

    def tokens(self, longest: int) -> int:
        """Padded tokens of a micro-batch of the dataset's longest rows at this point."""
        return self.micro_batch * min(longest, self.seq_len)

    def label(self) -> str:
        return f"{self.micro_batch}×{self.seq_len}, checkpointing {'on' if self.grad_ckpt else 'off'}"


@dataclass
class Measurement:
    """What the probe saw at one point (a few real optimizer steps on the longest rows)."""

    point: Point
    tokens: int
    """Padded tokens per micro-batch."""
    peak_bytes: int | None
    """The largest peak allocated over the steps; ``None`` after an out-of-memory error."""
    seconds: float
    """Wall time spent at the point, its warm-up step included."""
    tokens_per_s: float | None = None
    """Padded tokens per second over the timed steps; ``None`` after an out-of-memory error."""
    step_seconds: float | None = None
    """Seconds per timed step (the warm-up step left out); ``None`` after an out-of-memory error."""
    busy_pct: float | None = None
    """NVML's GPU busy % over the steps; ``None`` when not known (no NVML, the fake)."""
    oom: str | None = None
    """The out-of-memory error's message, when the point ran out of memory."""


@dataclass
class Row:
    """One candidate of the table."""

    point: Point
    accum: int
    tokens: int
    predicted_peak: int | None
    """From the fit; ``None`` when there were not enough points to fit this checkpointing setting."""
    headroom: int | None
    """Available minus predicted peak (negative: that much over)."""
    keeps_headroom: bool
    measured: Measurement | None = None
    above_oom: bool = False
    """At or above the tokens of a point that ran out of memory."""
    candidate: bool = True
    """A point that may be recommended; ``False``: probed only to fit the line (a shorter length)."""

    @property
    def effective_batch(self) -> int:
        return self.point.micro_batch * self.accum


@dataclass
class FitResult:
    """The probe's verdict: the table, the recommendation and what the plan left out."""

    rows: list[Row]
    recommended: Row | None
    available: int
    """Bytes torch can have: the GPU's total minus what is not torch's (the CUDA context...)."""
    headroom_frac: float
    effective_batch: int
    budget_s: float
    spent_s: float
    """Seconds spent at the probe points (loading the model is not counted)."""
    load_s: float = 0.0
    skipped: list[Point] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gpu_name: str = ""
    fake_memory: bool = False
    fits: dict[str, list[float]] = field(default_factory=dict)
    """``"on"``/``"off"`` (checkpointing) → ``[base, per_token, margin]`` of the fit."""

    @property
    def measurements(self) -> list[Measurement]:
        return [row.measured for row in self.rows if row.measured is not None]

    @property
    def ooms(self) -> int:
        return sum(1 for m in self.measurements if m.oom)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recommended"] = self.rows.index(self.recommended) if self.recommended is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitResult:
        """The result as :meth:`to_dict` wrote it (the probe's last line, read back)."""
        rows = [_row(item) for item in data["rows"]]
        index = data.get("recommended")
        fields = {k: v for k, v in data.items() if k not in ("rows", "recommended", "skipped")}
        return cls(
            rows=rows,
            recommended=rows[index] if isinstance(index, int) else None,
            skipped=[Point(**p) for p in data.get("skipped", [])],
            **fields,
        )


def _row(item: dict[str, Any]) -> Row:
    measured = item.get("measured")
    m = None
    if measured is not None:
        m = Measurement(**{**measured, "point": Point(**measured["point"])})
    return Row(**{**item, "point": Point(**item["point"]), "measured": m})


# -- the plan -------------------------------------------------------------------------------


def candidates(micro_batch: int, accum: int, seq_len: int, grad_ckpt: bool) -> list[Point]:
    """Every candidate: micro-batches 1, 2, 4, … up to the effective batch (and the config's own),
    at the config's sequence length, with checkpointing as configured and the other way."""
    effective = micro_batch * accum
    top = min(MAX_MICRO_BATCH, max(effective, micro_batch))
    sizes = {micro_batch}
    size = 1
    while size <= top:
        sizes.add(size)
        size *= 2
    return sorted(Point(mb, seq_len, ckpt) for mb in sizes for ckpt in (grad_ckpt, not grad_ckpt))


def probe_order(
    points: list[Point],
    longest: int,
    prior: Callable[[Point], int | None],
    available: int | None,
    grad_ckpt: bool,
    headroom_frac: float = DEFAULT_HEADROOM,
) -> list[Point]:
    """The points to probe, most useful first, chosen to bracket the limit.

    For the configured checkpointing, then the other: the smallest micro-batch (the floor; the
    first point's pace sets the budget's), the same at half the length (a second token count,
    cheap, so a line can be fitted whatever else the budget allows), the largest micro-batch the
    pre-flight estimate (``prior``) says keeps the headroom, and the next one above it. Without
    an estimate or a GPU size, the middle micro-batch stands in for the estimate's choice.
    """
    order: list[Point] = []
    for ckpt in (grad_ckpt, not grad_ckpt):
        line = sorted((p for p in points if p.grad_ckpt == ckpt), key=lambda p: (p.tokens(longest), p))
        if not line:
            continue
        floor = line[0]
        chosen = [floor]
        half = min(longest, floor.seq_len) // 2
        if half >= 16:
            chosen.append(Point(floor.micro_batch, half, ckpt))
        limit = None
        if available is not None:
            priors = [prior(p) for p in line]
            if all(v is not None for v in priors):
                keeps = [i for i, v in enumerate(priors) if (v or 0) <= available * (1 - headroom_frac)]
                limit = keeps[-1] if keeps else 0
        if limit is None:
            limit = len(line) // 2
        chosen += [line[limit]] + ([line[limit + 1]] if limit + 1 < len(line) else [])
        for p in chosen:
            if p not in order:
                order.append(p)
    return order


def point_guess(first: Measurement, tokens: int) -> float:
    """Seconds a point of ``tokens`` should take: :data:`STEPS` steps at the first point's timed
    pace, scaled by tokens (never below the first point's pace)."""
    per_step = first.step_seconds if first.step_seconds is not None else first.seconds / STEPS
    return STEPS * per_step * max(1.0, tokens / max(1, first.tokens))


def next_point_fits(elapsed: float, first: Measurement | None, next_tokens: int, budget_s: float) -> bool:
    """Whether a point of ``next_tokens`` should still end within the budget (:func:`point_guess`)."""
    if first is None:
        return True  # the first point always runs: without it there is nothing to pace or fit
    return elapsed + point_guess(first, next_tokens) <= budget_s


def between(points: list[Point], done: list[Measurement], longest: int) -> Point | None:
    """The next point that narrows a bracket: for a checkpointing setting with a point that fit
    and a larger one that ran out of memory, the unprobed candidate midway between them."""
    probed = {m.point for m in done}
    for ckpt in dict.fromkeys(m.point.grad_ckpt for m in done):
        fine = [m.tokens for m in done if m.point.grad_ckpt == ckpt and not m.oom]
        over = [m.tokens for m in done if m.point.grad_ckpt == ckpt and m.oom]
        if not fine or not over:
            continue
        low, high = max(fine), min(over)
        inside = sorted(
            (p for p in points if p.grad_ckpt == ckpt and p not in probed and low < p.tokens(longest) < high),
            key=lambda p: (p.tokens(longest), p),
        )
        if inside:
            return inside[len(inside) // 2]
    return None


def run_plan(
    order: Iterable[Point],
    longest: int,
    run_point: Callable[[Point], Measurement],
    budget_s: float,
    clock: Callable[[], float] = time.monotonic,
    say: Callable[[str], None] = lambda line: None,
    points: list[Point] | None = None,
) -> tuple[list[Measurement], list[Point]]:
    """Probe the points in order while the budget lasts; then, given every candidate
    (``points``), narrow each bracket around an out-of-memory point (:func:`between`).

    The first point always runs (without it there is nothing to pace or fit); every later one
    only when :func:`next_point_fits` says it should end within ``budget_s``.

    Returns:
        The measurements, and the points skipped because they would have overrun the budget.
    """
    start = clock()
    done: list[Measurement] = []
    skipped: list[Point] = []

    def attempt(point: Point) -> None:
        tokens = point.tokens(longest)
        if not next_point_fits(clock() - start, done[0] if done else None, tokens, budget_s):
            skipped.append(point)
            say(f"skipped {point.label()}: it would overrun the {budget_s:g} s budget")
            return
        say(f"probing {point.label()} ({tokens:,} tokens a micro-batch)")
        m = run_point(point)
        done.append(m)
        if m.oom:
            say(f"  out of memory at {tokens:,} tokens: counted as above the limit; going on")
        else:
            say(f"  peak {fmt_gib(m.peak_bytes)}, {m.tokens_per_s or 0:,.0f} tokens/s, {m.seconds:.1f} s")

    for point in order:
        attempt(point)
    while points is not None:
        narrower = between(points, done, longest)
        if narrower is None or narrower in skipped:
            break
        attempt(narrower)
    return done, skipped


# -- the verdict --------------------------------------------------------------------------------


def _fit_for(measurements: list[Measurement], ckpt: bool) -> Fit | None:
    points = [(m.tokens, m.peak_bytes) for m in measurements if m.point.grad_ckpt == ckpt and m.peak_bytes is not None]
    return fit_peaks(points)


def _oom_tokens(measurements: list[Measurement], ckpt: bool) -> int | None:
    """The fewest tokens that ran out of memory at this setting. Checkpointing saves memory, so an
    out-of-memory error with it on also bounds the same tokens with it off."""
    tokens = [
        m.tokens for m in measurements if m.oom and (m.point.grad_ckpt == ckpt or (m.point.grad_ckpt and not ckpt))
    ]
    return min(tokens) if tokens else None


def accumulation_for(micro_batch: int, effective: int) -> int:
    """Gradient accumulation steps that keep ``micro_batch × accum`` nearest the effective batch."""
    return max(1, round(effective / micro_batch))


def verdict(
    points: list[Point],
    measurements: list[Measurement],
    longest: int,
    available: int,
    effective_batch: int,
    headroom_frac: float = DEFAULT_HEADROOM,
) -> tuple[list[Row], Row | None, dict[str, list[float]], list[str]]:
    """Predict every candidate's peak and headroom and pick the recommendation.

    Returns:
        The rows (every candidate, in ``points``' order), the recommended row (the fastest
        measured one that keeps the headroom and is below any out-of-memory point), the fits by
        checkpointing setting, and notes for the reader.
    """
    by_point = {m.point: m for m in measurements}
    fits: dict[str, list[float]] = {}
    notes: list[str] = []
    rows: list[Row] = []
    for ckpt in (True, False):
        fit = _fit_for(measurements, ckpt)
        if fit is not None:
            fits["on" if ckpt else "off"] = [fit.base, fit.per_token, fit.margin]
    probed_only = [m.point for m in measurements if m.point not in points]
    for point in [*points, *probed_only]:
        tokens = point.tokens(longest)
        measured = by_point.get(point)
        raw = fits.get("on" if point.grad_ckpt else "off")
        predicted: int | None = None
        if raw is not None:
            predicted = int(Fit(*raw).predict(tokens))
        elif measured is not None and measured.peak_bytes is not None:
            predicted = measured.peak_bytes  # one point: its own peak, nothing to extrapolate
        oom_at = _oom_tokens(measurements, point.grad_ckpt)
        above = oom_at is not None and tokens >= oom_at
        headroom = available - predicted if predicted is not None else None
        keeps = headroom is not None and headroom >= headroom_frac * available and not above
        accum = accumulation_for(point.micro_batch, effective_batch)
        rows.append(Row(point, accum, tokens, predicted, headroom, keeps, measured, above, point in points))
    speed = {id(r): r.measured.tokens_per_s for r in rows if r.measured is not None and r.measured.tokens_per_s}
    eligible = [r for r in rows if id(r) in speed and r.keeps_headroom and r.candidate]
    best = max(eligible, key=lambda r: speed[id(r)]) if eligible else None
    if best is not None and best.effective_batch != effective_batch:
        notes.append(
            f"the effective batch {effective_batch} cannot be kept exactly with micro-batch "
            f"{best.point.micro_batch}: {best.point.micro_batch} × {best.accum} = {best.effective_batch}"
        )
    if best is None:
        notes.append(f"no measured candidate keeps {headroom_frac:.0%} headroom; lower max_seq_length or the batch")
    return rows, best, fits, notes


# -- text ---------------------------------------------------------------------------------------


def fmt_gib(n: int | float | None) -> str:
    return "–" if n is None else f"{n / GIB:.2f} GiB"


def table_lines(result: FitResult) -> list[str]:
    """The table, within 80 columns: every candidate, measured or predicted, the recommendation marked."""
    lines = ["  mb    seq ckpt accum   tokens pred. peak    headroom    tok/s  busy  ran"]
    for row in result.rows:
        m = row.measured
        ran = "OOM" if m is not None and m.oom else "yes" if m is not None else "–"
        if m is not None and not row.candidate:
            ran = "fit"
        tps = f"{m.tokens_per_s:,.0f}" if m is not None and m.tokens_per_s else "–"
        if m is None or m.oom:
            busy = "–"
        elif m.busy_pct is None:
            busy = "n/a"
        else:
            busy = f"{m.busy_pct:.0f}%"
        mark = "▶" if row is result.recommended else " "
        room = "–" if row.headroom is None else f"{row.headroom / GIB:+.2f} GiB"
        if row.above_oom:
            room = "over (OOM)"
        lines.append(
            f"{mark}{row.point.micro_batch:>3} {row.point.seq_len:>6} {'on' if row.point.grad_ckpt else 'off':>4}"
            f" {row.accum:>5} {row.tokens:>8,} {fmt_gib(row.predicted_peak):>10} {room:>11}"
            f" {tps:>8} {busy:>5}  {ran}"
        )
    return lines


def format_result(result: FitResult) -> str:
    """What ``loratop fit`` prints (within 80 columns): where, the table, the fit, the
    recommendation, what was left out."""
    gpu = result.gpu_name + (" — a TEST FAKE memory source, not a GPU" if result.fake_memory else "")
    out = [
        f"GPU: {gpu}",
        f"torch can have {fmt_gib(result.available)}; keeping {result.headroom_frac:.0%} headroom;"
        f" effective batch {result.effective_batch}",
        f"probed {len(result.measurements)} point(s) in {result.spent_s:.1f} s of a {result.budget_s:g} s budget"
        f" (loading: {result.load_s:.1f} s)",
        f"out-of-memory errors: {result.ooms} (each counted as a point above the limit)",
        "",
        *table_lines(result),
        "",
        "pred. peak: from the fit peak ≈ base + per_token × tokens (the OOM forecast's",
        "model). ran yes: tok/s and GPU busy measured; –: predicted only; fit: probed at",
        "a shorter length for the line, never recommended (it cuts rows). ▶ recommended",
    ]
    for key, (base, per_token, _margin) in sorted(result.fits.items()):
        out.append(f"fit, checkpointing {key}: {fmt_gib(base)} + {per_token / 1024:,.1f} KiB per token")
    for point in result.skipped:
        out.append(f"skipped (budget): {point.label()}")
    out.extend(f"note: {note}" for note in result.notes)
    best = result.recommended
    if best is None:
        out.append("recommended: none")
    else:
        p = best.point
        out.append(
            f"recommended: per_device_train_batch_size={p.micro_batch}, gradient_accumulation_steps={best.accum},"
        )
        out.append(f"             max_seq_length={p.seq_len}, gradient_checkpointing={str(p.grad_ckpt).lower()}")
    return "\n".join(out)


def recommended_changes(result: FitResult) -> dict[str, Any]:
    """The recommendation as config changes (dotted paths), for ``--write`` and the editor."""
    best = result.recommended
    if best is None:
        return {}
    return {
        "training.per_device_train_batch_size": best.point.micro_batch,
        "training.gradient_accumulation_steps": best.accum,
        "training.max_seq_length": best.point.seq_len,
        "training.gradient_checkpointing": best.point.grad_ckpt,
    }


def parse_budget(text: str) -> float:
    """``90s``, ``2m`` or ``90`` as seconds.

    Raises:
        ValueError: Not a positive duration.
    """
    value = text.strip().lower()
    scale = 60.0 if value.endswith("m") else 1.0
    seconds = float(value.rstrip("sm")) * scale
    if not seconds > 0:
        raise ValueError(f"--budget {text}: must be a positive duration (90s, 2m)")
    return seconds


def parse_headroom(text: str) -> float:
    """``10%`` or ``0.1`` as a fraction in [0, 1).

    Raises:
        ValueError: Not a share in [0 %, 100 %).
    """
    value = text.strip()
    frac = float(value.rstrip("%")) / 100 if value.endswith("%") else float(value)
    if not 0 <= frac < 1:
        raise ValueError(f"--headroom {text}: must be a share in [0%, 100%), e.g. 10%")
    return frac


WRITTEN_BY = "# written by loratop fit from "


def written_config(source_text: str, result: FitResult, parent: str) -> str:
    """The input config with the recommended knobs, ``parent`` set to the input and
    ``output_dir`` cleared (a new run gets its own folder); comments and layout kept.

    Raises:
        LayoutLost: The input's layout cannot take the changes (the caller writes it whole).
    """
    body = source_text.partition("\n")[2] if source_text.startswith(WRITTEN_BY) else source_text
    changes = {**recommended_changes(result), "output_dir": None, "parent": parent}
    return f"{WRITTEN_BY}{parent}\n" + rewrite_config(body, changes)
