"""How long a run would take on this box's CPU, for a config that names a GPU-sized model.

A new user who runs ``loratop check llama-3.1-8b-qlora`` on a laptop without a GPU should
learn before the launch that an epoch would take days, not after watching a frozen
"loading" line. The figure is a lower bound, and says so: the arithmetic of one epoch
(at least 4 floating-point operations per parameter per token: the forward pass and the
backward pass to the inputs; 6 with gradient checkpointing, which runs the forward twice)
over this CPU's own float32 matrix-multiply rate, measured here in a fraction of a second
(NF4 4-bit weights are slower on a CPU than that: they are unpacked for every product).

Torch-free: the rate is measured with numpy, when it is installed.
"""

from __future__ import annotations

import math
import re
import time

from loratop.core.value_format import format_value
from loratop.preflight.config import TINY_LEARNING_RATE, RunConfig
from loratop.preflight.data_files import EMBEDDED_DATASETS, DataProblem, resolve_path, usable_rows
from loratop.preflight.estimate import EstimateError, count_parameters, load_model_shape
from loratop.preflight.model_config import TINY

EMBEDDED_TRIAL_DATA = "embedded:" + next(iter(EMBEDDED_DATASETS))
"""The data a CPU trial suggests in place of a hub dataset: the one the tiny demo trains on."""

WARN_HOURS = 1.0
"""An epoch estimated at least this long on the CPU is worth a warning."""

SHORT_ROW_TOKENS = 128
"""Tokens of a short training row: the low end of the estimate (a row of chat turns or an
instruction with its answer is rarely shorter)."""

_SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])")


def parameters_from_name(name_or_path: str) -> int | None:
    """The parameter count a model's name gives (``Llama-3.1-8B`` → 8e9), or ``None``."""
    sizes = [float(m.group(1)) for m in _SIZE_IN_NAME.finditer(name_or_path)]
    return int(sizes[-1] * 1e9) if sizes else None


def model_parameters(name_or_path: str) -> tuple[int, str] | None:
    """The model's parameter count and where it came from (``config.json``, or its name).

    Never downloads: a hub model that is not cached is counted from its name.
    """
    try:
        shape = load_model_shape(name_or_path, download=False)
    except EstimateError:
        count = parameters_from_name(name_or_path)
        return (count, "its name") if count else None
    return count_parameters(shape).total, "its config.json"


def measured_cpu_flops(seconds: float = 0.2) -> float | None:
    """This CPU's float32 matrix-multiply rate in FLOP/s (numpy, all cores), or ``None``."""
    try:
        import numpy as np
    except ImportError:
        return None
    n = 512
    a = np.ones((n, n), dtype=np.float32)
    b = np.ones((n, n), dtype=np.float32)
    a @ b  # the first product pays for thread start-up
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        done += 1
    return 2.0 * n**3 * done / elapsed if done and elapsed > 0 else None


def cpu_epoch_hours(config: RunConfig, parameters: int, flops: float, rows: int) -> tuple[float, float]:
    """Hours of one epoch over ``rows`` (or of the whole run when ``max_steps`` is set) on the
    CPU: with rows of ``SHORT_ROW_TOKENS`` tokens, and with rows of ``max_seq_length``; both
    at ``flops``, so both are lower bounds."""
    t = config.training
    per_token = (6 if t.gradient_checkpointing else 4) * parameters
    if t.max_steps > 0:
        rows = t.max_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps
    low = rows * min(SHORT_ROW_TOKENS, t.max_seq_length) * per_token / flops / 3600
    high = rows * t.max_seq_length * per_token / flops / 3600
    return low, high


def _hours(h: float) -> str:
    if h >= 48:
        return f"{h / 24:,.0f} days"
    return f"{h:,.0f} h" if h >= 10 else f"{h:.1f} h"


def cpu_training_warning(config: RunConfig, has_gpu: bool) -> str | None:
    """``warning: ...`` when a run of this config on this box's CPU would take hours, else ``None``.

    Args:
        config: The checked config.
        has_gpu: Whether an NVIDIA GPU is visible (then the run trains there: no warning).
    """
    name = config.model.name_or_path
    if has_gpu or name == TINY:
        return None
    counted = model_parameters(name)
    if counted is None:
        return None
    parameters, source = counted
    rows = usable_rows(config.data.path, config.data.format, config.data.max_rows, config.data.eval_split)
    flops = measured_cpu_flops()
    if rows is None or not rows or flops is None:
        return (
            f"warning: model.name_or_path = {name}: no NVIDIA GPU here, and a model of {parameters / 1e9:.1f}B "
            f"parameters (from {source}) trains on a CPU at a few tokens a second at best: use a GPU box, or "
            f"for a CPU trial: {cpu_trial(config)}"
        )
    low, high = cpu_epoch_hours(config, parameters, flops, rows)
    if low < WARN_HOURS:
        return None
    span = "the run" if config.training.max_steps > 0 else "one epoch"
    between = _hours(low) if math.isclose(low, high, rel_tol=0.05) else f"{_hours(low)} to {_hours(high)}"
    return (
        f"warning: model.name_or_path = {name}: no NVIDIA GPU here; on this CPU {span} would take at least "
        f"{between} (estimated: {parameters / 1e9:.1f}B parameters from {source}, {rows:,} rows of "
        f"{min(SHORT_ROW_TOKENS, config.training.max_seq_length)}-{config.training.max_seq_length} tokens, "
        f"at the {flops / 1e9:.0f} GFLOP/s this CPU multiplies float32 matrices); use a GPU box, or "
        f"for a CPU trial: {cpu_trial(config)}"
    )


def cpu_trial(config: RunConfig) -> str:
    """The ``--set`` options that make this config a trial this CPU can run: the tiny model; the
    data shipped with loratop in place of a hub dataset (which needs the hub, and is sized for a
    GPU); and tiny's usual learning rate when the config's would be too high or too low for it
    (the advisor's rule)."""
    from loratop.preflight.advisor import advise

    knobs = [f"model.name_or_path={TINY}"]
    try:
        if resolve_path(config.data.path)[0] == "hub":
            knobs.append(f"data.path={EMBEDDED_TRIAL_DATA}")
    except DataProblem:
        pass
    trial = config.model_copy(deep=True)
    trial.model.name_or_path = TINY
    if any(item.field == "training.learning_rate" for item in advise(trial)):
        knobs.append(f"training.learning_rate={format_value(TINY_LEARNING_RATE)}")
    return " ".join(f"--set {knob}" for knob in knobs)
