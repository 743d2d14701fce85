"""What a launched run is built of, before its Trainer: the tokenizer and the 4-bit base with
LoRA attached, the training and eval rows, the audit of what trains, and the memory watch over
the batches. Plain functions: the run's config in, the pieces (and the facts ``run_started``
reports about them) out; each says what it does through ``emit`` (``log`` events).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratop.core import events as ev
from loratop.core.distributed import RankInfo
from loratop.preflight.config import RunConfig
from loratop.trainer.memory_sampler import MemorySampler
from loratop.trainer.torch_facts import device_info
from loratop.trainer.trainer_args import build_trainer
from loratop.trainer.user_error import UserFacingError

Emit = Callable[..., None]


@dataclass
class Built:
    """A launched run, ready to train."""

    trainer: Any
    """TRL's SFTTrainer, loratop's callback among its callbacks."""
    watch: Any
    """The run's MemoryWatch."""
    facts: dict[str, Any]
    """What ``run_started`` says of the ``model``, ``device``, ``data`` and trainable ``params``."""
    eval_size: tuple[int | None, int]
    """Tokens (``None``: unknown) and rows of the eval set (``(None, 0)`` without one)."""


def build(
    config: RunConfig,
    rank: RankInfo,
    run_dir: Path,
    emit: Emit,
    sampler: MemorySampler,
    gpu_memory: Callable[[bool], Any],
    callbacks: list[Any],
) -> Built:
    """Load the model in 4 bits, attach LoRA, load the data and build the trainer (with
    ``callbacks``: the run's ``LoratopCallback``); ``gpu_memory(cuda)`` is what the memory
    watch reads of the GPU."""
    cfg = config
    facts: dict[str, Any] = {"model": {}, "device": {}, "data": {}, "params": {}}
    size: tuple[int | None, int] = (None, 0)
    emit(ev.LOG, message="importing torch, transformers, peft, trl")
    import torch
    import transformers

    # The start banner names the libraries (a bug report or a slow run needs them first),
    # in trainer.log too: the log a user attaches to an issue.
    banner = versions_line(library_versions())
    emit(ev.LOG, message=banner)
    if rank.is_main:
        print(f"loratop: {banner}", flush=True)
    cuda = torch.cuda.is_available()
    if cuda and rank.distributed:
        torch.cuda.set_device(rank.local_rank)
    device = facts["device"] = device_info(torch, cuda)
    if rank.distributed:
        device.update(rank=rank.rank, world_size=rank.world_size)
    if cuda:
        from loratop.trainer.memory_watch import cuda_figures

        sampler.torch_stats = cuda_figures
    compute_dtype = getattr(torch, cfg.quantization.bnb_4bit_compute_dtype)
    if compute_dtype == torch.float16 and not cuda:
        raise UserFacingError("quantization.bnb_4bit_compute_dtype = 'float16' needs a GPU; use bfloat16 on CPU")
    if compute_dtype == torch.bfloat16 and cuda and not torch.cuda.is_bf16_supported():
        raise UserFacingError(
            "quantization.bnb_4bit_compute_dtype = 'bfloat16' is not supported on this GPU; use float16"
        )
    # The rows before the model: a data file that went bad since the launch checks (or a hub
    # dataset they could not see) fails in seconds, not after minutes of loading the weights.
    dataset, eval_set, facts["data"] = load_dataset(cfg, emit)
    path = cfg.model.name_or_path
    if path == "tiny":
        from loratop.trainer.tiny_model import tiny_model_dir

        emit(ev.LOG, message="preparing the embedded tiny model")
        folder, built = tiny_model_dir()
        emit(ev.LOG, message=("built" if built else "cached") + f" tiny model at {folder}")
        path = str(folder)
    # Seeded after the tiny model is built: building it draws random numbers, so seeding
    # before made the first run on a fresh cache start its adapters unlike every later one.
    transformers.set_seed(cfg.training.seed)
    tokenizer, model, facts["model"] = load_model(cfg, rank, path, compute_dtype, cuda, emit)
    trainer = build_trainer(cfg, run_dir, rank, model, tokenizer, dataset, eval_set, cuda, callbacks, emit)
    if eval_set is not None:
        size = eval_size(cfg, trainer)
    facts["params"] = audit_or_refuse(cfg, trainer.model, emit)
    watch, found = watch_memory(cfg, trainer, sampler, gpu_memory(cuda), emit)
    facts["data"].update(found)
    return Built(trainer, watch, facts, size)


def load_model(
    config: RunConfig, rank: RankInfo, path: str, compute_dtype: Any, cuda: bool, emit: Emit
) -> tuple[Any, Any, dict[str, Any]]:
    """The tokenizer and the (4-bit) base with LoRA attached, ready to train, and the model's
    facts for ``run_started``; ``path`` is where the model is (the tiny model's folder)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from loratop.trainer.load_progress import reporting_load_progress

    cfg = config
    emit(ev.LOG, message=f"loading {cfg.model.name_or_path}")
    name = cfg.model.name_or_path

    def loading(line: str) -> None:  # a download or weight-loading bar moved on
        emit(ev.LOG, message=f"loading {name}: {line}")

    with reporting_load_progress(loading) as bar:
        tokenizer, model = _load_base(config, rank, path, compute_dtype, cuda, bar)
    info = model_info(model, cfg)
    if not cuda:
        keep_cpu_weights_unpacked(model)

    gc = cfg.training.gradient_checkpointing
    if cfg.quantization.load_in_4bit:
        # Casts norms to fp32 and makes inputs require grad, so checkpointing works
        # through a frozen 4-bit base.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()

    targets: list[str] | str = cfg.lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.lora_alpha,  # type: ignore[arg-type]  # peft's hint says int; floats work
        lora_dropout=cfg.lora.lora_dropout,
        target_modules=targets,
        bias=cfg.lora.bias,
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)  # a PeftModel wraps the base
    except ValueError as exc:
        if "not found in the base model" in str(exc) or "Target module" in str(exc):
            raise UserFacingError(f"lora.target_modules = {cfg.lora.target_modules}: {exc}") from None
        raise
    return tokenizer, model, info


def _load_base(
    config: RunConfig, rank: RankInfo, path: str, compute_dtype: Any, cuda: bool, bar: type
) -> tuple[Any, Any]:
    """The tokenizer and the (4-bit) base model; ``bar`` reports the hub's download bars."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    cfg = config
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quantization = None
    fsdp = cfg.distributed.strategy == "fsdp" and rank.distributed
    if cfg.quantization.load_in_4bit:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quantization.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=cfg.quantization.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
            # FSDP shards parameters of one dtype: the packed 4-bit weights must be stored
            # in the compute dtype, not uint8, to be sharded with the rest.
            **({"bnb_4bit_quant_storage": compute_dtype} if fsdp else {}),
        )
    # DDP: each rank loads the whole 4-bit base onto its own GPU. FSDP: no device map;
    # the base is sharded across the GPUs once the Trainer wraps it.
    device_map = None if fsdp or not cuda else {"": rank.local_rank}
    model = AutoModelForCausalLM.from_pretrained(
        path,
        quantization_config=quantization,
        dtype=compute_dtype,
        device_map=device_map,
        trust_remote_code=cfg.model.trust_remote_code,
        tqdm_class=bar,  # the hub's download bars, reported as phase messages
    )
    return tokenizer, model


def load_dataset(config: RunConfig, emit: Emit) -> tuple[Any, Any, dict[str, Any]]:
    """The training rows, the eval rows (``None`` without ``data.eval_split`` / ``eval_path``) and
    the data's facts for ``run_started``."""
    cfg = config.data
    emit(ev.LOG, message=f"loading data from {cfg.path}")
    dataset, fmt, source = _read_rows("data.path", cfg.path, cfg.format, cfg.split, cfg.max_rows)
    eval_set = None
    if cfg.eval_split is not None:
        from loratop.preflight.data_files import held_out_rows

        size: float | int = cfg.eval_split if cfg.eval_split < 1 else int(cfg.eval_split)
        held = held_out_rows(cfg.eval_split, len(dataset))
        if held < 1 or held >= len(dataset):
            raise UserFacingError(
                f"data.eval_split = {cfg.eval_split:g}: holds out {held} of {len(dataset)} rows; "
                "at least 1 must be held out and 1 left to train on"
            )
        # The run's seed picks the rows: the same split on every run with that seed.
        parts = dataset.train_test_split(test_size=size, seed=config.training.seed, shuffle=True)
        dataset, eval_set = parts["train"], parts["test"]
    elif cfg.eval_path is not None:
        emit(ev.LOG, message=f"loading eval data from {cfg.eval_path}")
        eval_set, eval_fmt, _ = _read_rows("data.eval_path", cfg.eval_path, cfg.format, cfg.split, None)
        if eval_fmt != fmt:
            raise UserFacingError(
                f"data.eval_path = {cfg.eval_path!r}: its rows are {eval_fmt}, the training rows {fmt}; "
                "both must have one format"
            )
    info: dict[str, Any] = {"path": cfg.path, "source": source, "rows": len(dataset), "format": fmt}
    if eval_set is not None:
        info["eval_rows"] = len(eval_set)
    return dataset, eval_set, info


def _read_rows(key: str, path: str, format: str, split: str, max_rows: int | None) -> tuple[Any, Any, str]:
    """One data source as a ``datasets.Dataset``, its row format and where it came from."""
    from datasets import Dataset, load_dataset

    from loratop.preflight.data_files import DataProblem, inspect_data, load_rows

    try:
        info = inspect_data(path, format)
    except DataProblem as exc:
        raise UserFacingError(f"{key} = {path!r}: {exc}") from None
    if info.file is not None:
        rows = load_rows(info.file)
        if max_rows:
            rows = rows[:max_rows]
        fmt = info.format
        columns = {"messages": ["messages"], "prompt_completion": ["prompt", "completion"], "text": ["text"]}
        keep = columns[fmt or "text"]
        return Dataset.from_list([{k: row[k] for k in keep} for row in rows]), fmt, info.source
    dataset = load_dataset(path, split=split)
    if max_rows:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    return dataset, format, info.source


def audit_or_refuse(config: RunConfig, model: Any, emit: Emit) -> dict[str, Any]:
    """The trainable-parameter audit (its ``params`` for ``run_started``); a base that trains
    where LoRA alone should is refused unless ``lora.allow_trainable_base``."""
    from loratop.trainer.audit import audit_parameters

    audit = audit_parameters(model, train_biases=config.lora.bias != "none")
    if audit.lora_b_nonzero:
        emit(
            ev.LOG,
            level="warning",
            message=f"{len(audit.lora_b_nonzero)} lora_B tensor(s) do not start at zero: "
            + ", ".join(audit.lora_b_nonzero[:4]),
        )
    if audit.unexpected:
        emit(ev.LOG, level="error", message=audit.refusal())
        if not config.lora.allow_trainable_base:
            raise UserFacingError(audit.refusal())
    return audit.as_event()


def watch_memory(
    config: RunConfig, trainer: Any, sampler: MemorySampler, gpu: Any, emit: Emit
) -> tuple[Any, dict[str, Any]]:
    """Record batch sizes and prepare the OOM forecast from the tokenised lengths: the run's
    MemoryWatch (``gpu``: what it reads, ``None`` on a CPU) and the data's facts it found."""
    from loratop.core.oom_forecast import worst_batch_tokens
    from loratop.trainer.memory_watch import BatchRecorder, MemoryWatch

    t = config.training
    recorder = BatchRecorder()
    recorder.attach(trainer.model)  # the batch the model runs, not the one collated ahead
    lengths: list[int] = []
    if "input_ids" in getattr(trainer.train_dataset, "column_names", []):
        lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    worst = worst_batch_tokens(lengths, t.per_device_train_batch_size, t.max_seq_length)
    facts = {"longest_tokens": min(max(lengths), t.max_seq_length) if lengths else None, "worst_batch_tokens": worst}
    watch = MemoryWatch(
        emit,
        sampler,
        recorder,
        gpu,
        worst,
        t.per_device_train_batch_size,
        paged_optimizer=t.optim.startswith("paged_"),
        knobs=t.model_dump(),
    )
    return watch, facts


def eval_size(config: RunConfig, trainer: Any) -> tuple[int | None, int]:
    """Tokens (``None`` where the rows are not tokenised) and rows of the Trainer's eval set."""
    tokenised: Any = trainer.eval_dataset
    if tokenised is None:
        return None, 0
    ids = tokenised["input_ids"] if "input_ids" in tokenised.column_names else []
    tokens = sum(min(len(row), config.training.max_seq_length) for row in ids) if len(ids) else None
    return tokens, len(tokenised)


def keep_cpu_weights_unpacked(model: Any) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit layer's weights for its
    CPU kernel the first time the layer runs in eval mode without gradients — the first
    evaluation — and the training steps after it then get wrong gradients through the frozen
    base, silently (a run evaluating at step 3 parted from the same run without after step 3).
    Turn the repacking off for loratop's own CPU runs (a GPU run never repacks)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def model_info(model: Any, cfg: RunConfig) -> dict[str, Any]:
    """The model's facts for ``run_started``: its shape and how it is quantized."""
    config = model.config
    linear4bit = 0
    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            linear4bit += 1
    return {
        "name_or_path": cfg.model.name_or_path,
        "model_type": getattr(config, "model_type", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "quantized_linear_layers": linear4bit,
        "load_in_4bit": cfg.quantization.load_in_4bit,
        "quant_type": cfg.quantization.bnb_4bit_quant_type if cfg.quantization.load_in_4bit else None,
    }


LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "trl")
"""The libraries a run's versions name, besides Python."""


def library_versions() -> dict[str, str]:
    """Python's version and each of :data:`LIBRARIES`' installed versions (from their package
    metadata: nothing is imported), ``not installed`` for one that is missing."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def versions_line(versions: dict[str, str]) -> str:
    """``torch 2.5.1 · transformers 4.57.1 · … · Python 3.11.9``: the start banner's line."""
    libraries = " · ".join(f"{name} {v}" for name, v in versions.items() if name != "python")
    return f"{libraries} · Python {versions.get('python', '?')}"


__all__ = [
    "LIBRARIES",
    "Built",
    "build",
    "audit_or_refuse",
    "eval_size",
    "keep_cpu_weights_unpacked",
    "library_versions",
    "load_dataset",
    "load_model",
    "model_info",
    "versions_line",
    "watch_memory",
]
