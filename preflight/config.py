"""The run configuration: one typed schema, loaded from YAML, overridable with ``--set``.

Torch-free (pydantic and PyYAML only): the dashboard and ``loratop check`` import it.
Knob names follow the libraries a QLoRA user already knows: peft's ``LoraConfig``,
bitsandbytes' ``BitsAndBytesConfig`` and transformers' ``TrainingArguments``.

User mistakes never raise a traceback: :func:`load_config` raises :class:`ConfigError`
holding one line per problem, each naming the field, the value and what is accepted.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from loratop.core.run_dir import STAMPED, foreign_files
from loratop.core.yaml_files import MAX_YAML_BYTES, YamlTooBig, load_yaml
from loratop.preflight.architectures import LINEAR_MODULES, SPECIAL_TARGETS, model_type_of

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

OPTIMIZERS = (
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adamw_bnb_8bit",
    "adamw_8bit",
    "adamw_torch",
    "adamw_torch_fused",
    "adafactor",
    "sgd",
    "paged_lion_8bit",
    "paged_lion_32bit",
    "lion_8bit",
    "lion_32bit",
    "paged_ademamix_8bit",
    "paged_ademamix_32bit",
    "ademamix",
    "ademamix_8bit",
    "rmsprop",
)
"""The ``optim`` values accepted: transformers' ``OptimizerNames`` that need no extra
package (a test keeps this list inside transformers' own)."""

SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)
"""The ``lr_scheduler_type`` values accepted (transformers' ``SchedulerType``)."""

USUAL_LEARNING_RATE = 2e-4
"""The usual QLoRA learning rate for a pretrained base (the QLoRA paper's for 7B and 13B
models, and most recipes'): ``training.learning_rate`` when a config leaves it unset."""

TINY_LEARNING_RATE = 2e-3
"""The usual learning rate for the embedded ``tiny`` model: it is random-init and learns from
scratch, so it needs about ten times the usual rate (the shipped demo uses 2e-3). An unset
``training.learning_rate`` with ``model.name_or_path: tiny`` (the default model) is this."""


def usual_learning_rate(name_or_path: str) -> float:
    """The usual learning rate for a model: :data:`TINY_LEARNING_RATE` for ``tiny``, else
    :data:`USUAL_LEARNING_RATE`. The default of an unset ``training.learning_rate``, and what
    the advisor measures a set one against."""
    return TINY_LEARNING_RATE if name_or_path == "tiny" else USUAL_LEARNING_RATE


SdpaBackend = Literal["auto", "flash", "efficient", "cudnn", "math"]
SDPA_BACKENDS: tuple[str, ...] = get_args(SdpaBackend)
"""The ``training.sdpa_backend`` values: PyTorch's choice, or the attention kernel it tries first."""


def _yaml_number(value: Any) -> Any:
    """Accept ``2e-4`` written in YAML: PyYAML reads a float without a dot as a string."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Float = Annotated[float, BeforeValidator(_yaml_number)]


class _Section(BaseModel):
    # allow_inf_nan=False: `learning_rate: .inf` is a typo, not a schedule.
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True, allow_inf_nan=False)


class ModelSection(_Section):
    """Which base model to fine-tune."""

    name_or_path: str = "tiny"
    """A Hugging Face hub id (``google/gemma-3-4b-it``), a local folder with
    ``config.json`` and weights, or ``tiny``: a small random-init Llama and a tokenizer
    built locally in seconds (no download), for demos and tests."""
    trust_remote_code: bool = False
    """Passed to ``from_pretrained``; only for models whose code lives on the hub."""


class QuantizationSection(_Section):
    """How the frozen base is loaded (bitsandbytes' ``BitsAndBytesConfig``)."""

    load_in_4bit: bool = True
    """Load the base in 4 bits (QLoRA). ``false`` loads it in the compute dtype (plain LoRA)."""
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type: ``nf4`` (NormalFloat, the QLoRA paper's choice) or ``fp4``."""
    bnb_4bit_use_double_quant: bool = True
    """Quantize the quantization constants too (saves ~0.4 bits per parameter)."""
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Dtype the 4-bit weights are dequantized to for each matmul."""


class LoraSection(_Section):
    """The adapters (peft's ``LoraConfig``)."""

    r: int = Field(default=16, gt=0, le=4096)
    """LoRA rank: the inner dimension of each adapter pair."""
    lora_alpha: Float = Field(default=32, gt=0)
    """Scale numerator: updates are scaled by ``lora_alpha / r``."""
    lora_dropout: Float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input, in [0, 1)."""
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_PROJECTIONS), min_length=1)
    """Module names to adapt; default all seven projections of a Llama-style block.
    ``[all-linear]`` is peft's shorthand for every linear layer but the output head."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases train: ``none`` keeps the base fully frozen."""
    allow_trainable_base: bool = False
    """Train anyway when a non-adapter base parameter requires grad. By default the
    trainer refuses and names the tensors: that is the classic QLoRA bug that trains
    (and saves) far more than the adapter."""


class TrainingSection(_Section):
    """The optimisation loop (transformers' ``TrainingArguments``)."""

    learning_rate: Float = Field(default=USUAL_LEARNING_RATE, gt=0)
    """Peak learning rate. Unset: the usual rate for the model, 2e-4 (the usual QLoRA value) for
    a pretrained base and 2e-3 for ``tiny``, which is random-init and learns from scratch."""
    lr_scheduler_type: str = "cosine"
    """Learning-rate schedule after warm-up (transformers' ``SchedulerType``)."""
    warmup_steps: Float = Field(default=0.03, ge=0)
    """Linear warm-up: a value ≥ 1 is a step count, below 1 a fraction of all steps."""
    max_steps: int = Field(default=-1, ge=-1)
    """Optimizer steps to run; -1 means use ``num_train_epochs``."""
    num_train_epochs: Float = Field(default=1.0, gt=0)
    """Passes over the dataset when ``max_steps`` is -1."""
    per_device_train_batch_size: int = Field(default=4, ge=1)
    """Sequences per forward pass on each device."""
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Forward passes per optimizer step (effective batch = this × batch size)."""
    max_seq_length: int = Field(default=1024, ge=8)
    """Longer examples are truncated to this many tokens."""
    optim: str = "paged_adamw_8bit"
    """Optimizer; ``paged_adamw_8bit`` pages its state to host RAM under memory pressure."""
    weight_decay: Float = Field(default=0.0, ge=0)
    """AdamW weight decay on the adapters."""
    max_grad_norm: Float = Field(default=0.3, gt=0)
    """Gradient clipping norm (0.3 in the QLoRA paper)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: less memory, ~30% more compute."""
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    """Seed for adapter init, data order and dropout (0 to 2**32 - 1: numpy's range)."""
    save_steps: int = Field(default=0, ge=0)
    """Save an adapter checkpoint every N steps; 0 saves only at the end."""
    eval_steps: int = Field(default=0, ge=0)
    """With eval data (``data.eval_split`` or ``data.eval_path``): the held-out loss every N
    steps, and always at the end; 0 evaluates at the end only."""
    early_stopping_patience: int | None = Field(default=None, ge=1)
    """Stop gracefully after this many evaluations without a new best eval loss, and keep
    the adapter of the best evaluation as the run's adapter. Unset: no early stopping."""
    pad_to_multiple_of: int | None = Field(default=None, ge=1)
    """Pad each batch to a multiple of this many tokens (TRL's ``pad_to_multiple_of``; 64 is
    a good value), so batch shapes repeat and a GPU reuses the attention plans it made for
    them. The loss is the same: padding is masked. At most ``max_seq_length``. Unset: each
    batch is padded to its own longest row."""
    group_by_length: bool = False
    """Batch rows of similar length together (transformers' ``train_sampling_strategy:
    group_by_length``; the longest batch comes first): less padding, fewer shapes. Which rows
    share a step changes, so each step's loss moves more; the loss per token does not."""
    packing: bool = False
    """Pack whole rows into sequences of up to ``max_seq_length`` tokens (TRL's ``packing``,
    best-fit): no padding at all, and each row attends only to itself (packing is always
    padding-free, see ``padding_free``). A batch is then ``per_device_train_batch_size``
    packed sequences, so a step holds more tokens than unpacked: fewer, larger steps. The
    eval loss is computed on unpacked rows, as without packing."""
    padding_free: bool = False
    """Flatten each batch into one row with position ids instead of padding it (TRL's
    ``padding_free``): the same rows per step and the same loss, no padded tokens. Made for
    flash-attention kernels; with sdpa (transformers' default, loratop's) transformers masks
    each row off from the others: correct, but attention then spans the whole batch."""
    sdpa_backend: SdpaBackend = "auto"
    """The kernel PyTorch's scaled-dot-product attention prefers while training. ``auto``:
    PyTorch's choice (cuDNN on Hopper GPUs, which plans a graph for each new batch shape).
    ``flash``, ``efficient`` (memory-efficient) or ``cudnn``: that kernel first and, where it
    cannot run a call (flash takes no padding mask), the others but cuDNN; ``math``: the
    plain reference kernel alone (slow; for checking). The same math every way. On CPU:
    ``auto``, ``flash`` or ``math``."""
    dataloader_num_workers: int = Field(default=0, ge=0, le=64)
    """Worker processes that collate batches ahead of the training loop (transformers'
    ``dataloader_num_workers``); 0 collates in the training process, between steps."""
    dataloader_pin_memory: bool = True
    """Collate batches into page-locked host memory, for faster copies to the GPU
    (transformers' default; a CPU run never pins)."""

    @field_validator("pad_to_multiple_of")
    @classmethod
    def _pad_within_length(cls, value: int | None, info: ValidationInfo) -> int | None:
        longest = info.data.get("max_seq_length")
        if value is not None and isinstance(longest, int) and value > longest:
            raise ValueError(
                f"at most training.max_seq_length ({longest}): every batch would be padded past it; try 64"
            )
        return value

    @field_validator("optim")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        if value not in OPTIMIZERS:
            raise ValueError(_accepted_message(value, OPTIMIZERS))
        return value

    @field_validator("lr_scheduler_type")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        if value not in SCHEDULERS:
            raise ValueError(_accepted_message(value, SCHEDULERS))
        return value


class DataSection(_Section):
    """The training data."""

    path: str = "embedded:tool-chat"
    """A local ``.jsonl``, ``.json`` or ``.parquet`` file (relative to where loratop
    runs), a hub dataset id (``org/name``), or ``embedded:tool-chat`` (3,000 synthetic
    tool-calling chats shipped with loratop)."""
    format: Literal["auto", "text", "prompt_completion", "messages"] = "auto"
    """Row format: ``text`` (a ``text`` field), ``prompt_completion`` (``prompt`` and
    ``completion`` fields; loss on the completion only), ``messages`` (chat turns with
    ``role`` and ``content``), or ``auto`` to detect it from the first row."""
    split: str = "train"
    """Split to train on, for hub datasets."""
    max_rows: int | None = Field(default=None, ge=1)
    """Use only the first N rows (quick experiments); all rows when unset."""
    eval_split: Float | None = Field(default=None, gt=0)
    """Hold rows out for the eval loss: a fraction below 1 (``0.05``) or a row count
    (``200``), split off by the run's seed (the same rows every run with that seed).
    Unset: no held-out loss, unless ``eval_path`` names a file."""
    eval_path: str | None = None
    """A separate eval file (``.jsonl``, ``.json`` or ``.parquet``, same formats as ``path``),
    in place of ``eval_split``."""

    @field_validator("eval_split")
    @classmethod
    def _fraction_or_rows(cls, value: float | None) -> float | None:
        if value is not None and value >= 1 and value != int(value):
            raise ValueError("a fraction below 1 (0.05) or a whole row count (200)")
        return value

    @field_validator("eval_path")
    @classmethod
    def _one_eval_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("eval_split") is not None:
            raise ValueError("set data.eval_split or data.eval_path, not both")
        return value


class MonitorSection(_Section):
    """What the trainer measures while it trains."""

    memory_sample_hz: Float = Field(default=2.0, gt=0, le=50)
    """Memory samples per second (host RSS, and NVML/torch figures on a GPU); the
    sampler runs on its own thread, also between steps and during model load."""
    spike_sensitivity: Float = Field(default=1.0, gt=0, le=10)
    """How readily the loss-spike detector fires: 2.0 fires on smaller jumps, 0.5
    only on larger ones."""
    overfit_evals: int = Field(default=3, ge=1, le=100)
    """Raise an overfitting alert when the eval loss has risen this many evaluations in a
    row while the training loss fell."""
    on_spike: Literal["warn", "checkpoint", "stop"] = "warn"
    """What a severe or fatal spike does: ``warn`` only reports it; ``checkpoint`` also
    saves the adapter at that step; ``stop`` ends the run gracefully with the adapter
    saved, so you can lower the learning rate and rerun."""


class DistributedSection(_Section):
    """More than one GPU or box: PyTorch's own launcher (``torchrun``) starts one trainer
    per GPU. The default, one process, is the ordinary single-device run."""

    nproc_per_node: int = Field(default=1, ge=1, le=64)
    """Trainer processes (ranks) on this box: one per GPU. 1 is today's single process."""
    nnodes: int = Field(default=1, ge=1, le=1024)
    """Boxes in the run; each runs ``loratop run`` with the same config and its own ``node_rank``."""
    node_rank: int = Field(default=0, ge=0)
    """This box's place, 0 to ``nnodes - 1``. Node 0 holds rank 0: the events, the adapter
    and the dashboard live there."""
    rdzv_endpoint: str | None = None
    """``host:port`` of node 0, where the boxes meet (torchrun's rendezvous); needed when
    ``nnodes`` > 1. Unset on one box: a free local port."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """The process group's backend: ``auto`` is ``nccl`` on GPUs and ``gloo`` on CPU."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """``ddp`` copies the 4-bit base to every GPU and splits the batches; ``fsdp`` shards
    it across GPUs (QLoRA-FSDP, for a base too big for one card; GPUs only)."""
    timeout_s: int = Field(default=300, ge=10, le=86400)
    """How long a collective may wait for a peer before it fails: a dead rank ends the run
    within this, not torch's default 30 minutes. Model loading must fit in it too."""

    @property
    def world_size(self) -> int:
        """Ranks in the whole run."""
        return self.nproc_per_node * self.nnodes


class RunConfig(_Section):
    """A whole run: the model, how it is quantized, the adapters, the loop, the data."""

    model: ModelSection = Field(default_factory=ModelSection)
    quantization: QuantizationSection = Field(default_factory=QuantizationSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    data: DataSection = Field(default_factory=DataSection)
    monitor: MonitorSection = Field(default_factory=MonitorSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    output_dir: str | None = None
    """The run directory. Unset: ``runs/<config name>-<date>-<time>`` under the
    current folder. It must be new or empty: a folder that holds a run, or any file of
    yours, is refused (a time-stamped name moves on to ``-2``, ``-3``, ... instead)."""
    parent: str | None = None
    """What this run was tweaked from, set by loratop's knob editor: the parent run's
    folder (a rerun with changes) or the config file the edit started from. ``null``
    for a run launched straight from a file."""

    @model_validator(mode="after")
    def _learning_rate_for_the_model(self) -> RunConfig:
        # An unset rate is the usual one for the model: the default model, tiny, learns from
        # scratch and would barely move at a pretrained model's 2e-4 (the advisor says so).
        if "learning_rate" not in self.training.model_fields_set:
            self.training.learning_rate = usual_learning_rate(self.model.name_or_path)
        return self


class ConfigError(Exception):
    """A config the user must fix; :attr:`problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _accepted_message(value: Any, accepted: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(str(value), accepted, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"not one of the accepted values{hint}; accepted: {', '.join(accepted)}"


_SYNONYMS = {
    "rank": "r",
    "lr": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "epochs": "num_train_epochs",
    "grad_accum": "gradient_accumulation_steps",
    "model_name": "name_or_path",
}
"""Common names for a field that spelling similarity cannot find (``rank`` is far from ``r``)."""


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema class holding the field at ``loc`` (for did-you-mean on unknown keys)."""
    cls: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        cls = annotation
    return cls


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problems_by_field(err: ValidationError) -> list[tuple[str, str]]:
    """``(dotted field, "field = value: what is accepted")`` for each validation error."""
    problems = []
    for item in err.errors():
        loc = tuple(item["loc"])
        path = ".".join(str(p) for p in loc)
        kind = item["type"]
        if kind == "extra_forbidden":
            section = _section_at(loc)
            known = list(section.model_fields) if section else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            if not close and _SYNONYMS.get(str(loc[-1])) in known:
                close = [_SYNONYMS[str(loc[-1])]]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append((path, f"{path}: unknown key{hint}; accepted here: {', '.join(known)}"))
            continue
        message = item["msg"]
        message = re.sub(r"^Value error, ", "", message)
        message = re.sub(r"^Input should be ", "must be ", message)
        message = message.replace("Input should ", "must ")
        if kind == "model_type" or kind == "dict_type":
            message = "must be a mapping of keys to values (a YAML section)"
        problems.append((path, f"{path} = {_short(item.get('input'))}: {message}"))
    return problems


def _problem_lines(err: ValidationError, source_of: dict[str, str], default_source: str) -> list[str]:
    return [f"{source_of.get(path, default_source)}: {text}" for path, text in _problems_by_field(err)]


def validate_tree(tree: dict[str, Any]) -> tuple[RunConfig | None, dict[str, str]]:
    """Validate a config tree field by field (the knob editor's live check).

    Returns:
        The config, or ``None`` and one problem per dotted field path
        (``{"lora.r": "lora.r = 0: must be greater than 0"}``). Checks outside the
        tree (data file, output folder) are :func:`check_outside`'s job.
    """
    try:
        return RunConfig.model_validate(tree), {}
    except ValidationError as err:
        problems: dict[str, str] = {}
        for path, text in _problems_by_field(err):
            problems.setdefault(path, text)
        return None, problems


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """Turn ``["lora.r=16", "output_dir=runs/x"]`` into ``{"lora.r": 16, ...}``.

    Values are read as YAML, so ``16`` is an int, ``[q_proj, v_proj]`` a list and
    ``2e-4`` a number.

    Raises:
        ConfigError: an assignment without ``=`` or with an empty key.
    """
    result: dict[str, Any] = {}
    problems = []
    for text in assignments:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"--set {text}: expected section.key=value, e.g. --set lora.r=16")
            continue
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except YamlTooBig as exc:
            problems.append(f"--set {key}: the value {exc}")
            continue
        except (yaml.YAMLError, ValueError):
            value = raw
        result[key] = value
    if problems:
        raise ConfigError(problems)
    return result


def _apply_override(tree: dict[str, Any], dotted: str, value: Any) -> str | None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return f"--set {dotted}: {part} is not a section"
        node = child
    node[parts[-1]] = value
    return None


MAX_CONFIG_BYTES = MAX_YAML_BYTES
"""A run config is a page of YAML; past 1 MiB it is a data file given by mistake (and YAML
would parse it for minutes)."""


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with clear errors for a missing file or malformed YAML."""
    try:
        size = path.stat().st_size if path.is_file() else 0
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                [f"{path}: {size / (1 << 20):.1f} MiB is too big for a run config (at most 1 MiB): is it a data file?"]
            )
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a folder, expected a YAML config file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    try:
        data = load_yaml(text)
    except YamlTooBig as exc:
        raise ConfigError([f"{path}: refused: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path}{where}: malformed YAML: {problem}"]) from None
    except ValueError as exc:  # a value PyYAML cannot build, e.g. an integer of 5,000 digits
        raise ConfigError([f"{path}: malformed YAML: {str(exc).splitlines()[0][:200]}"]) from None
    if data is None:
        return {}  # empty: every value a default (the CLI says so, see cli.main._load)
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{path}: must be a YAML mapping of sections (model:, lora:, ...), got {type(data).__name__}"]
        )
    return data


def default_output_dir(config_path: Path | None, now: _dt.datetime | None = None) -> str:
    """``runs/<config stem>-<YYYYmmdd-HHMMSS>``: a new, sortable folder per run."""
    stem = config_path.stem if config_path else "run"
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{stem}-{stamp}")


def load_config(
    path: str | Path | None,
    overrides: dict[str, Any] | None = None,
    *,
    check_files: bool = True,
) -> RunConfig:
    """Load, override and validate a config; fill in the output folder.

    Args:
        path: A YAML file, or ``None`` for all defaults.
        overrides: From :func:`parse_overrides`; applied on top of the file.
        check_files: Also check what lives outside the file: the data file, its rows,
            target modules against the model's architecture, the output folder.

    Returns:
        The validated config, with ``output_dir`` set.

    Raises:
        ConfigError: every problem found, one line each.
    """
    config_path = Path(path) if path is not None else None
    tree = read_yaml(config_path) if config_path else {}
    source = str(config_path) if config_path else "defaults"
    source_of: dict[str, str] = {}
    problems = []
    for dotted, value in (overrides or {}).items():
        problem = _apply_override(tree, dotted, value)
        if problem:
            problems.append(problem)
        source_of[dotted] = f"--set {dotted}"
    if problems:
        raise ConfigError(problems)
    try:
        config = RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_problem_lines(err, source_of, source)) from None
    if config.output_dir is None:
        config.output_dir = default_output_dir(config_path)
    if check_files:
        problems = check_outside(config, source_of, source)
        if problems:
            raise ConfigError(problems)
    return config


def check_outside(config: RunConfig, source_of: dict[str, str] | None = None, source: str = "config") -> list[str]:
    """Checks that need more than the file: data, architecture, output folder.

    Returns:
        One line per problem (empty when all is well).
    """
    source_of = source_of or {}

    def where(dotted: str) -> str:
        return source_of.get(dotted, source)

    problems = []
    model_type = model_type_of(config.model.name_or_path)
    if model_type is None and _looks_local(config.model.name_or_path):
        problems.append(
            f"{where('model.name_or_path')}: model.name_or_path = {config.model.name_or_path!r}: "
            "no config.json there; expected a model folder, a hub id (org/name) or 'tiny'"
        )
    known = LINEAR_MODULES.get(model_type or "")
    if known:
        for name in config.lora.target_modules:
            if name not in known and name not in SPECIAL_TARGETS:
                accepted = list(known) + list(SPECIAL_TARGETS)
                problems.append(
                    f"{where('lora.target_modules')}: lora.target_modules: {name!r} is not a module of a "
                    f"{model_type} model; {_accepted_message(name, accepted)}"
                )
    from loratop.core.distributed import section_problems

    problems += [f"{where('distributed')}: {line}" for line in section_problems(config.distributed)]
    from loratop.preflight.data_files import DataProblem, held_out_rows, inspect_data

    rows = None
    try:
        rows = inspect_data(config.data.path, config.data.format).rows
    except DataProblem as exc:
        problems.append(f"{where('data.path')}: data.path = {config.data.path!r}: {exc}")
    if config.data.eval_path is not None:
        try:
            inspect_data(config.data.eval_path, config.data.format)
        except DataProblem as exc:
            problems.append(f"{where('data.eval_path')}: data.eval_path = {config.data.eval_path!r}: {exc}")
    split = config.data.eval_split
    if rows is not None and config.data.max_rows:
        rows = min(rows, config.data.max_rows)
    if split is not None and rows is not None:
        held = held_out_rows(split, rows)
        if held < 1 or held >= rows:
            problems.append(
                f"{where('data.eval_split')}: data.eval_split = {split:g}: holds out {held} of {rows} rows; "
                "at least 1 must be held out and 1 left to train on"
            )
    out = Path(config.output_dir or ".")
    try:
        if (out / "events.jsonl").exists() and not STAMPED.search(out.name):  # a stamped one gets a suffix
            problems.append(
                f"{where('output_dir')}: output_dir = {str(out)!r}: already holds a run "
                "(events.jsonl); choose a new folder or remove that one"
            )
        elif out.exists() and not out.is_dir():
            problems.append(f"{where('output_dir')}: output_dir = {str(out)!r}: exists and is not a folder")
        elif not STAMPED.search(out.name) and (foreign := foreign_files(out)):  # never written into
            problems.append(f"{where('output_dir')}: output_dir = {str(out)!r}: {foreign}")
    except OSError as exc:  # a name too long for the file system, say
        problems.append(f"{where('output_dir')}: output_dir = {str(out)[:60]!r}…: unusable: {exc.strerror or exc}")
    return problems


def box_problems(config: RunConfig) -> list[str]:
    """Why this config cannot run on this box — FSDP or nccl without a GPU, more ranks than
    GPUs, an attention kernel only a GPU has — one line each (``field: why``). Facts about the
    box, not mistakes in the config: ``loratop check`` says them as warnings (the file may be
    meant for the GPU box), a launch refuses them. Each line names its field."""
    problems = _distributed_box_problems(config.distributed)  # each line names its field
    kernel = _sdpa_problem(config.training.sdpa_backend)
    if kernel is not None:
        problems.append(kernel)
    return problems


def unavailable_data(config: RunConfig, *, probe: bool = True) -> list[str]:
    """The hub datasets of this config a run could not load here (``data.path``, ``data.eval_path``),
    one line each (``field = value: why and what to do``); see
    :func:`preflight.data_files.unavailable_dataset`. Facts about the box and its network, like
    an unreachable model: ``loratop check`` warns (``probe=False``: only ``HF_HUB_OFFLINE``
    tells), a launch refuses."""
    from loratop.preflight.data_files import unavailable_dataset

    lines = []
    for key, path in data_paths(config):
        why = unavailable_dataset(path, config.data.split, probe=probe)
        if why is not None:
            lines.append(f"{key} = {path}: {why}")
    return lines


def data_paths(config: RunConfig) -> list[tuple[str, str]]:
    """The datasets a run of this config loads, as ``(field, value)``: ``data.path``, then
    ``data.eval_path`` where one is set. The one walk that a launch's refusal
    (:func:`unavailable_data`) and ``loratop check``'s warnings both take."""
    fields = (("data.path", config.data.path), ("data.eval_path", config.data.eval_path))
    return [(key, path) for key, path in fields if path is not None]


def _distributed_box_problems(section: DistributedSection) -> list[str]:
    """:func:`core.distributed.box_problems`, with this box's GPUs (NVML) when it matters."""
    from loratop.core.distributed import box_problems as distributed_box_problems

    if section.world_size == 1 and section.strategy == "ddp" and section.backend != "nccl":
        return []  # one process: nothing depends on the GPUs
    from loratop.core.gpu_devices import NVML_OK, GpuDevices

    gpus = GpuDevices()
    try:
        visible = len(gpus.devices) if gpus.state == NVML_OK else 0
        return distributed_box_problems(section, visible, gpus.note)
    finally:
        gpus.close()


SDPA_ON_CPU = ("auto", "flash", "math")
"""The ``training.sdpa_backend`` values that run on a CPU: PyTorch has a CPU flash kernel and the
math one, but no CPU memory-efficient or cuDNN kernel."""


def sdpa_cpu_problem(backend: str) -> str | None:
    """Why ``training.sdpa_backend`` cannot run on a CPU, or ``None`` when it can (the trainer
    says the same at launch, when torch finds no GPU)."""
    if backend in SDPA_ON_CPU:
        return None
    return (
        f"training.sdpa_backend = {backend!r}: no NVIDIA GPU is visible, and PyTorch has no {backend} attention "
        f"kernel for a CPU; accepted on CPU: {', '.join(SDPA_ON_CPU)}"
    )


def _sdpa_problem(backend: str) -> str | None:
    """:func:`sdpa_cpu_problem` when NVML sees no GPU on this box (a GPU's own limits are the trainer's
    to check at launch, where torch knows them)."""
    if backend in SDPA_ON_CPU:
        return None
    from loratop.core.gpu_devices import NO_NVIDIA_GPU, NVML_OK, GpuDevices

    gpus = GpuDevices()
    try:
        none_here = gpus.state == NO_NVIDIA_GPU or (gpus.state == NVML_OK and not gpus.devices)
    finally:
        gpus.close()
    return sdpa_cpu_problem(backend) if none_here else None  # an NVML error proves nothing: launch checks


def _looks_local(name: str) -> bool:
    """A name that can only be a local path (not a hub id like ``org/name``)."""
    if name == "tiny":
        return False
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        return True
    return Path(name).exists()


def defaults_for(tree: dict[str, Any]) -> RunConfig:
    """The schema's defaults as a config tree gets them: an unset ``training.learning_rate``
    follows the tree's ``model.name_or_path`` (:func:`usual_learning_rate`)."""
    model = tree.get("model")
    name = model.get("name_or_path") if isinstance(model, dict) else None
    return RunConfig.model_validate({"model": {"name_or_path": name}} if isinstance(name, str) else {})


def field_value(config: RunConfig, field: str) -> Any:
    """The value of a dotted field, e.g. ``field_value(config, "lora.r")`` → ``16``."""
    value: Any = config
    for part in field.split("."):
        value = getattr(value, part)
    return value


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML, in schema order, for the run folder's ``config.yaml``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
