"""The knob editor's model: which knobs it shows, how typed text becomes values, what they add up to.

No Textual here, so every rule is unit-tested with plain data; ``tui.screens.knob_editor_screen`` draws it.
A form edits a config *tree* (the YAML's dict): the knobs it shows are replaced, everything
else (model, data, monitor, ...) is carried over untouched.
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from loratop.core.value_format import format_value
from loratop.core.yaml_files import load_yaml
from loratop.preflight.config import (
    ALL_PROJECTIONS,
    OPTIMIZERS,
    SCHEDULERS,
    SDPA_BACKENDS,
    RunConfig,
    defaults_for,
    dump_config,
    field_value,
    validate_tree,
)
from loratop.preflight.config_rewrite import LayoutLost, rewrite_config, same_value

Kind = Literal["int", "float", "choice", "bool"]

TARGETS = "lora.target_modules"
"""The knob drawn as seven checkboxes rather than a text field."""


@dataclass(frozen=True)
class Knob:
    """One field of the form."""

    path: str
    """Dotted path in the config, e.g. ``lora.r``."""
    kind: Kind
    hint: str
    """Shown beside the field while it has no error or advice."""
    choices: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.path.rsplit(".", 1)[-1]


SECTIONS: tuple[tuple[str, tuple[Knob, ...]], ...] = (
    (
        "LoRA adapters",
        (
            Knob("lora.r", "int", "rank of each adapter pair"),
            Knob("lora.lora_alpha", "float", "updates scale by α/r"),
            Knob("lora.lora_dropout", "float", "adapter input dropout, [0, 1)"),
        ),
    ),
    (
        "Training",
        (
            Knob("training.learning_rate", "float", "peak; QLoRA usually 2e-4"),
            Knob("training.lr_scheduler_type", "choice", "schedule after warm-up", SCHEDULERS),
            Knob("training.warmup_steps", "float", "≥ 1 steps, < 1 fraction of run"),
            Knob("training.per_device_train_batch_size", "int", "sequences per forward pass"),
            Knob("training.gradient_accumulation_steps", "int", "forward passes per optimizer step"),
            Knob("training.max_seq_length", "int", "longer rows are truncated"),
            Knob("training.max_steps", "int", "-1: use num_train_epochs"),
            Knob("training.num_train_epochs", "float", "used when max_steps is -1"),
            Knob("training.optim", "choice", "paged_* can spill to host RAM", OPTIMIZERS),
            Knob("training.gradient_checkpointing", "bool", "less memory, ~30% more compute"),
            Knob("training.eval_steps", "int", "eval loss every N steps; 0: at the end"),
        ),
    ),
    (
        "Speed (same math; see GPU busy)",
        (
            Knob("training.sdpa_backend", "choice", "attention kernel tried first", SDPA_BACKENDS),
            Knob("training.group_by_length", "bool", "batch rows of like length: fewer shapes"),
            Knob("training.packing", "bool", "pack rows, padding-free (lower the batch)"),
            Knob("training.dataloader_num_workers", "int", "processes collating batches ahead"),
        ),
    ),
    (
        "Quantization",
        (
            Knob("quantization.bnb_4bit_quant_type", "choice", "4-bit data type", ("nf4", "fp4")),
            Knob("quantization.bnb_4bit_use_double_quant", "bool", "quantize the constants too"),
        ),
    ),
)

KNOBS: dict[str, Knob] = {knob.path: knob for _, knobs in SECTIONS for knob in knobs}

PRESETS: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "all": tuple(ALL_PROJECTIONS),
}
"""The target presets: attention-only, MLP-only, all seven projections."""


# -- reading and writing a tree ------------------------------------------------------------


def get_path(tree: dict[str, Any], path: str) -> Any:
    """The value at a dotted path, or the schema's default when the tree leaves it out (the
    learning rate's follows the tree's model: :func:`preflight.config.defaults_for`)."""
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return field_value(defaults_for(tree), path)
        node = node[part]
    return node


def with_values(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``tree`` with each dotted path set (sections created as needed)."""
    result = copy.deepcopy(tree)
    for path, value in values.items():
        node = result
        parts = path.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return result


def changed_values(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The form's values that differ from ``tree``'s (the schema's default where it is silent).

    Numbers by value (``16`` is ``16.0``), and target modules as a set, ``all-linear`` read as
    the seven projections the form checks for it.
    """
    changed = {}
    for path, value in values.items():
        old = get_path(tree, path)
        same = _modules(old) == _modules(value) if path == TARGETS else same_value(old, value)
        if not same:
            changed[path] = value
    return changed


def _modules(targets: Any) -> set[str]:
    names = {str(t) for t in targets} if isinstance(targets, (list, tuple)) else {str(targets)}
    return names - {"all-linear"} | (set(ALL_PROJECTIONS) if "all-linear" in names else set())


# -- saving ----------------------------------------------------------------------------------

SAVED_BY = "# saved by loratop's knob editor from "
"""The first line of a file the editor saves; a file saved from a saved file keeps one."""


def saved_yaml(
    config: RunConfig, origin: str, source_text: str | None = None, changes: dict[str, Any] | None = None
) -> tuple[str, str | None]:
    """The YAML the editor saves: its :data:`SAVED_BY` line, then the origin file with the
    changed knobs (and ``output_dir``/``parent``) rewritten and everything else as written.

    Args:
        config: The config to save, its ``output_dir`` and ``parent`` set.
        origin: Where it came from, in words, for the first line.
        source_text: The origin file as read; ``None`` (a run's resolved ``config.yaml``):
            the config is written whole, in schema order.
        changes: The knobs that changed (:func:`changed_values`).

    Returns:
        The text, and why the origin's layout could not be kept (then the text is the
        config written whole), or ``None``.
    """
    header = f"{SAVED_BY}{origin}\n"
    whole = header + dump_config(config)
    if source_text is None:
        return whole, None
    body = source_text
    if body.startswith(SAVED_BY):  # saved before: one such line, the newest
        body = body.partition("\n")[2]
    wanted = {**(changes or {}), "output_dir": config.output_dir, "parent": config.parent}
    try:
        body = rewrite_config(body, wanted)
        saved, problems = validate_tree(load_yaml(body) or {})
    except (LayoutLost, ValueError, yaml.YAMLError) as exc:  # YamlTooBig is a ValueError
        return whole, str(exc)
    if saved is None or saved.model_dump() != config.model_dump():
        return whole, "; ".join(problems.values()) or "the rewritten file did not read back as the form's config"
    return header + body, None


# -- text <-> values -----------------------------------------------------------------------


def parse_text(knob: Knob, text: str) -> tuple[Any, str | None]:
    """Turn what was typed into a value of the knob's kind.

    Returns:
        ``(value, None)``, or ``(None, problem)`` naming the field and what it accepts.
        Range checks (``r > 0``) are the schema's: see :func:`preflight.config.validate_tree`.
    """
    raw = text.strip()
    if knob.kind == "int":
        if re.fullmatch(r"[+-]?\d+", raw.replace("_", "").replace(",", "")):
            return int(raw.replace("_", "").replace(",", "")), None
        return None, f"{knob.path} = {raw!r}: must be a whole number"
    if knob.kind == "float":
        try:
            value = float(raw)
        except ValueError:
            return None, f"{knob.path} = {raw!r}: must be a number, e.g. 2e-4"
        if value != value or value in (float("inf"), float("-inf")):
            return None, f"{knob.path} = {raw!r}: must be a finite number"
        return value, None
    if knob.kind == "choice":
        if raw in knob.choices:
            return raw, None
        return None, f"{knob.path} = {raw!r}: not one of {', '.join(knob.choices)}"
    return raw.lower() in ("true", "yes", "1", "on"), None


# -- effective values ----------------------------------------------------------------------


def scale_text(config: RunConfig) -> str:
    lora = config.lora
    return f"α/r = {format_value(lora.lora_alpha)}/{lora.r} = {lora.lora_alpha / lora.r:.3g}"


def batch_text(config: RunConfig, dataset_rows: int | None = None) -> str:
    """Effective batch, and the run's length in optimizer steps when it can be told."""
    t = config.training
    effective = t.per_device_train_batch_size * t.gradient_accumulation_steps
    text = (
        f"batch {t.per_device_train_batch_size}×{t.gradient_accumulation_steps} = {effective} "
        f"(≤ {effective * t.max_seq_length:,} tokens/step)"
    )
    if t.max_steps > 0:
        return f"{text} · {t.max_steps:,} steps"
    rows = min(dataset_rows, config.data.max_rows or dataset_rows) if dataset_rows else None
    if rows:
        steps = -(-rows // effective) * t.num_train_epochs
        return f"{text} · ≈{steps:,.0f} steps ({format_value(t.num_train_epochs)} epoch of {rows:,} rows)"
    return f"{text} · {format_value(t.num_train_epochs)} epoch(s)"


# -- where a new run goes ------------------------------------------------------------------

_STAMP = re.compile(r"-\d{8}-\d{6}(-\d+)?$")


def base_name(name: str) -> str:
    """A run's or config's name without loratop's ``-<YYYYmmdd-HHMMSS>`` stamp."""
    return _STAMP.sub("", name) or "run"


def new_run_dir(runs_root: Path, name: str, now: _dt.datetime | None = None) -> Path:
    """``<runs_root>/<base>-<YYYYmmdd-HHMMSS>``, a folder that does not exist yet.

    ``name`` may be a sample's stem or a parent run's folder name; a parent's own
    time stamp is dropped, so a chain of reruns stays ``demo-<time>``, not ``demo-<t1>-<t2>``.
    """
    base = base_name(name)
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate = runs_root / f"{base}-{stamp}"
    n = 2
    while candidate.exists():
        candidate = runs_root / f"{base}-{stamp}-{n}"
        n += 1
    return candidate
