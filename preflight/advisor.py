"""The knob advisor: warnings about a valid config whose knobs fight each other or the data.

A config can pass validation and still waste a run: a rank the data cannot constrain,
a learning rate ten times too small, attention-only adapters on a knowledge task.
:func:`advise` is pure (config and :class:`Facts` in, :class:`Advice` out, no I/O), so
``loratop check`` and the config editor share it; :func:`gather_facts` does the I/O
that some rules need (the data's row count, the pre-flight peak against the GPU).

Every rule only warns: the config stays valid and the run may go ahead. Each threshold
is a named constant below with the reason for its number.

Torch-free: the standard library, pydantic and the project's torch-free modules
(``preflight.config``, ``preflight.data_files``, ``preflight.estimate``) only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel

from loratop.core.value_format import short_number as _num
from loratop.preflight.config import TINY_LEARNING_RATE, USUAL_LEARNING_RATE, RunConfig, usual_learning_rate
from loratop.preflight.data_files import usable_rows
from loratop.preflight.estimate import EstimateError, estimate, fmt_size, load_model_shape, visible_gpu_total

RULES = (
    "rank-vs-data",
    "alpha-vs-rank",
    "dropout-large-data",
    "dropout-tiny-data",
    "attention-only",
    "trains-base",
    "lr-high",
    "lr-low",
    "optim-not-paged",
    "no-checkpointing-long-seq",
    "remote-code",
)
"""Every rule id :func:`advise` can give."""

RANK_CEILINGS = ((1_000, 16), (10_000, 64), (100_000, 128))
"""``(rows below, highest sensible r)``, a rule of thumb: an adapter's trainable
parameters grow with r while what a dataset can pin down grows with its rows; past
about r 16 for under a thousand rows, 64 for under ten thousand and 128 for under a
hundred thousand, the extra rank mostly memorises phrasing. From 100,000 rows up no
rank is too high."""

ALPHA_MAX_RATIO = 4.0
"""Highest ``lora_alpha / r`` before warning. peft scales updates by α/r; α = r or 2r
(scale 1–2) is the usual, so more than 4 multiplies every step well past what the
learning rate was chosen for."""

REFERENCE_LR = USUAL_LEARNING_RATE
"""The usual QLoRA learning rate for a pretrained base (the QLoRA paper's for 7B and 13B
models, and most recipes'); also the schema's default for one."""

TINY_REFERENCE_LR = TINY_LEARNING_RATE
"""The reference for the embedded ``tiny`` model: it is random-init and learns from
scratch, so it needs about ten times the usual rate (the shipped demo uses 2e-3); also the
schema's default for it, so a config that leaves the rate unset is never warned about."""

LR_HIGH_FACTOR = 5.0
"""Warn at this many times the reference rate or more: loss spikes and divergence."""

LR_LOW_FACTOR = 10.0
"""Warn at the reference rate divided by this or less: LoRA's B matrices start at zero,
so at a tenth of the usual rate the adapters barely move and the run underfits."""

ATTENTION_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj"})
"""Attention projections; targeting only these leaves the MLP, where most of what a
model knows is stored, untouched."""

LARGE_DATA_ROWS = 100_000
"""From this many rows the data regularises the adapter by itself; dropout only slows it."""

TINY_DATA_ROWS = 1_000
"""Below this many rows an adapter without dropout overfits within an epoch or two."""

USUAL_DROPOUT = "0.05–0.1"
"""The dropout most LoRA recipes use on small data (the QLoRA paper: 0.1 up to 13B, 0.05 above)."""

PAGED_OPTIM_SHARE = 0.85
"""Warn about an unpaged optimizer when the estimated peak reaches this share of the
GPU: the estimate leaves out transient buffers and fragmentation, so the last 15% is
what one long batch or allocator spike eats."""

LONG_SEQUENCE = 2048
"""``max_seq_length`` from which training without gradient checkpointing is warned
about: activations grow with batch × sequence × layers and at 2048 tokens outweigh a
4-bit 7B base."""

_PAGED_EQUIVALENT = {
    "adamw_8bit": "paged_adamw_8bit",
    "adamw_bnb_8bit": "paged_adamw_8bit",
    "adamw_torch": "paged_adamw_32bit",
    "adamw_torch_fused": "paged_adamw_32bit",
    "lion_8bit": "paged_lion_8bit",
    "lion_32bit": "paged_lion_32bit",
    "ademamix": "paged_ademamix_32bit",
    "ademamix_8bit": "paged_ademamix_8bit",
}
"""The paged optimizer closest to an unpaged one; anything else gets ``paged_adamw_8bit``."""


@dataclass(frozen=True)
class Advice:
    """One warning about one knob."""

    rule: str
    """Stable id from :data:`RULES`, e.g. ``rank-vs-data``."""
    field: str
    """Dotted path of the knob it is about, e.g. ``lora.r``."""
    message: str
    """One sentence: what is off and why, with the numbers."""


@dataclass(frozen=True)
class Facts:
    """What the advice needs beyond the config; ``None`` = unknown (the rules that need it stay silent)."""

    dataset_rows: int | None = None
    """Rows the run trains on, after ``data.max_rows``."""
    peak_bytes: int | None = None
    """Pre-flight estimate of the configured method's peak memory."""
    gpu_total_bytes: int | None = None
    """Total memory of the GPU the run would use."""


NO_FACTS = Facts()
"""Nothing known beyond the config: only the rules that need no facts speak."""


def _field_order(model: type[BaseModel], prefix: str = "") -> list[str]:
    order = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            order += _field_order(annotation, f"{prefix}{name}.")
        else:
            order.append(f"{prefix}{name}")
    return order


_FIELD_ORDER = {name: index for index, name in enumerate(_field_order(RunConfig))}
"""Dotted field → position in the schema, the order advice is given in."""


def rank_ceiling(rows: int) -> int | None:
    """The highest sensible ``lora.r`` for this many rows (:data:`RANK_CEILINGS`); ``None``: no ceiling."""
    for below, ceiling in RANK_CEILINGS:
        if rows < below:
            return ceiling
    return None


def reference_lr(config: RunConfig) -> float:
    """The usual learning rate for this config's model (:data:`TINY_REFERENCE_LR` for ``tiny``)."""
    return usual_learning_rate(config.model.name_or_path)


def _at_least(value: float, bound: float) -> bool:
    """``value >= bound``, counting a float that lands a rounding error short as equal."""
    return value >= bound or math.isclose(value, bound, rel_tol=1e-9)


def advise(config: RunConfig, facts: Facts = NO_FACTS) -> list[Advice]:
    """Warnings about knobs that are valid but likely to waste the run.

    Pure: no I/O; rules whose facts are ``None`` stay silent.

    Args:
        config: A validated run config.
        facts: What is known beyond the config, from :func:`gather_facts` or a caller's
            own knowledge.

    Returns:
        The advice in schema order of the fields (``lora.r`` before ``training.optim``),
        at most one per rule and field; empty when nothing is off.
    """
    lora, t = config.lora, config.training
    rows = facts.dataset_rows
    advice: list[Advice] = []

    if rows is not None:
        ceiling = rank_ceiling(rows)
        if ceiling is not None and lora.r > ceiling:
            advice.append(
                Advice(
                    "rank-vs-data",
                    "lora.r",
                    f"r = {lora.r} is above what {rows:,} rows can constrain (r ≤ {ceiling} is plenty): "
                    "a high-rank adapter memorises their phrasing instead of learning the task",
                )
            )

    scale = lora.lora_alpha / lora.r
    if scale > ALPHA_MAX_RATIO:
        advice.append(
            Advice(
                "alpha-vs-rank",
                "lora.lora_alpha",
                f"lora_alpha = {_num(lora.lora_alpha)} with r = {lora.r} scales every update by α/r = "
                f"{_num(scale, 3)} where 1–2 is usual: such over-strong updates destabilise training "
                f"(lora_alpha = {lora.r} or {2 * lora.r} is the usual for r = {lora.r})",
            )
        )

    if rows is not None and lora.lora_dropout > 0 and rows >= LARGE_DATA_ROWS:
        advice.append(
            Advice(
                "dropout-large-data",
                "lora.lora_dropout",
                f"lora_dropout = {_num(lora.lora_dropout)} on {rows:,} rows regularises what that much data "
                "already regularises and only slows learning (0 is the usual from "
                f"{LARGE_DATA_ROWS:,} rows)",
            )
        )
    if rows is not None and lora.lora_dropout == 0 and rows < TINY_DATA_ROWS:
        advice.append(
            Advice(
                "dropout-tiny-data",
                "lora.lora_dropout",
                f"lora_dropout = 0 on only {rows:,} rows lets the adapter overfit them within an epoch or two "
                f"({USUAL_DROPOUT} is the usual below {TINY_DATA_ROWS:,} rows)",
            )
        )

    if set(lora.target_modules) <= ATTENTION_MODULES:
        advice.append(
            Advice(
                "attention-only",
                "lora.target_modules",
                f"only attention projections ({', '.join(lora.target_modules)}) are adapted: for a knowledge-heavy "
                "task add gate_proj, up_proj, down_proj, since the MLP holds most of what a model knows and the "
                "QLoRA paper needed all linear layers to match full fine-tuning",
            )
        )

    if lora.bias != "none":
        which = "every bias of the base model" if lora.bias == "all" else "the biases of the adapted layers"
        advice.append(
            Advice(
                "trains-base",
                "lora.bias",
                f"bias = {lora.bias} trains {which} too and saves them with the adapter, so loading the adapter "
                "also changes the base (none keeps the base frozen)",
            )
        )
    if lora.allow_trainable_base:
        advice.append(
            Advice(
                "trains-base",
                "lora.allow_trainable_base",
                "allow_trainable_base = true lets the frozen-base audit pass base weights that require grad, "
                "so the run may train and save far more than the adapter (the classic QLoRA bug)",
            )
        )

    lr, ref = t.learning_rate, reference_lr(config)
    tiny = config.model.name_or_path == "tiny"
    whose = "the tiny random-init model, which learns from scratch" if tiny else "QLoRA on a pretrained model"
    if _at_least(lr, LR_HIGH_FACTOR * ref):
        advice.append(
            Advice(
                "lr-high",
                "training.learning_rate",
                f"learning_rate = {_num(lr)} is {_num(lr / ref, 3)}× the usual {_num(ref)} for {whose}: expect loss "
                "spikes and divergence",
            )
        )
    elif _at_least(ref / LR_LOW_FACTOR, lr):
        advice.append(
            Advice(
                "lr-low",
                "training.learning_rate",
                f"learning_rate = {_num(lr)} is 1/{_num(ref / lr, 3)} of the usual {_num(ref)} for {whose}: the "
                "adapters start at B = 0 and barely move, so the run underfits",
            )
        )

    peak, total = facts.peak_bytes, facts.gpu_total_bytes
    if peak is not None and total and _at_least(peak / total, PAGED_OPTIM_SHARE) and not t.optim.startswith("paged_"):
        paged = _PAGED_EQUIVALENT.get(t.optim, "paged_adamw_8bit")
        advice.append(
            Advice(
                "optim-not-paged",
                "training.optim",
                f"the estimated peak of {fmt_size(peak)} is {peak / total:.0%} of the GPU's {fmt_size(total)} and "
                f"{t.optim} is not paged: a memory spike ends the run out of memory, where {paged} would spill "
                "optimizer state to host RAM",
            )
        )

    if not t.gradient_checkpointing and t.max_seq_length >= LONG_SEQUENCE:
        advice.append(
            Advice(
                "no-checkpointing-long-seq",
                "training.gradient_checkpointing",
                f"gradient_checkpointing = false with max_seq_length = {t.max_seq_length}: every layer keeps its "
                "activations for the backward pass, so memory grows with every layer (checkpointing trades ~30% "
                "more compute for most of it)",
            )
        )

    if config.model.trust_remote_code:
        advice.append(
            Advice(
                "remote-code",
                "model.trust_remote_code",
                f"trust_remote_code = true runs the Python code that {config.model.name_or_path!r} ships, with your "
                "permissions, on this machine: read it (or pin a revision you have read) before training",
            )
        )

    return sorted(advice, key=lambda a: _FIELD_ORDER.get(a.field, len(_FIELD_ORDER)))


def gather_facts(config: RunConfig) -> Facts:
    """The facts :func:`advise` needs, read from disk and the GPU.

    Rows come from :func:`~preflight.data_files.inspect_data`, capped by
    ``data.max_rows``; a hub dataset (not fetched by a check) or a data problem gives
    ``None``. The peak is estimated only when a GPU is visible: without one, nothing
    is downloaded, so a machine without a GPU never touches the network here.

    Never raises for a user's mistake: what cannot be found is ``None``.
    """
    rows = usable_rows(config.data.path, config.data.format, config.data.max_rows, config.data.eval_split)

    gpu_total, gpu_name = visible_gpu_total()
    peak: int | None = None
    if gpu_total is not None:
        try:
            shape = load_model_shape(config.model.name_or_path)
        except EstimateError:
            pass
        else:
            est = estimate(shape, config, gpu_total, gpu_name)
            peak = est.row(est.selected).total
    return Facts(dataset_rows=rows, peak_bytes=peak, gpu_total_bytes=gpu_total)
