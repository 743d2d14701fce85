"""What a script's run is, read from the script's own objects: its settings from
``TrainingArguments`` and the model's PEFT and quantization configs, the model's shape, the
libraries it imported, and the memory watch over its batches (for :mod:`trainer.script_run`).
A fact that cannot be read is left out (shown as ``–``), never filled with loratop's default.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path
from typing import Any

from loratop.core import events as ev
from loratop.core.distributed import RankInfo
from loratop.trainer.event_sink import BackgroundSink
from loratop.trainer.memory_sampler import MemorySampler
from loratop.trainer.torch_facts import device_info


def plain(value: Any) -> Any:
    """A TrainingArguments value as YAML/JSON has it (enums by their value)."""
    value = getattr(value, "value", value)
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(str(v) for v in value)
    return value if isinstance(value, (str, int, float, bool, list, dict)) or value is None else str(value)


def settings_of(args: Any, model: Any) -> dict[str, Any]:
    """The run's settings in the sections of loratop's config, read from the script's
    ``TrainingArguments`` and the model's PEFT and quantization configs; a setting that
    cannot be read is left out (shown as ``–``), never filled with loratop's default."""
    training: dict[str, Any] = {}
    for key in (
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "warmup_ratio",
        "max_steps",
        "num_train_epochs",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "optim",
        "weight_decay",
        "max_grad_norm",
        "gradient_checkpointing",
        "seed",
        "save_steps",
        "eval_steps",
        "logging_steps",
    ):
        if hasattr(args, key):
            training[key] = plain(getattr(args, key))
    length = getattr(args, "max_length", None) or getattr(args, "max_seq_length", None)
    if isinstance(length, int):
        training["max_seq_length"] = length
    settings: dict[str, Any] = {"training": training, "source": "LoratopCallback"}
    base = getattr(model, "get_base_model", lambda: model)()
    config = getattr(base, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    if name:
        settings["model"] = {"name_or_path": str(name)}
    peft_configs = getattr(model, "peft_config", None)
    if isinstance(peft_configs, dict) and peft_configs:
        peft = next(iter(peft_configs.values()))
        lora = {
            key: plain(getattr(peft, key))
            for key in ("r", "lora_alpha", "lora_dropout", "target_modules", "bias")
            if getattr(peft, key, None) is not None
        }
        settings["lora"] = lora
    quant = getattr(config, "quantization_config", None)
    if quant is not None:
        q = quant.to_dict() if hasattr(quant, "to_dict") else dict(quant) if isinstance(quant, dict) else {}
        keys = ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype")
        settings["quantization"] = {k: plain(q[k]) for k in keys if k in q}
    return settings


def model_info(model: Any, settings: dict[str, Any]) -> dict[str, Any]:
    base = getattr(model, "get_base_model", lambda: model)() if model is not None else None
    config = getattr(base, "config", None)
    linear4bit = sum(1 for m in base.modules() if type(m).__name__ == "Linear4bit") if base is not None else 0
    quant = settings.get("quantization") or {}
    return {
        "name_or_path": (settings.get("model") or {}).get("name_or_path"),
        "model_type": getattr(config, "model_type", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "quantized_linear_layers": linear4bit,
        "load_in_4bit": bool(quant.get("load_in_4bit")),
        "quant_type": quant.get("bnb_4bit_quant_type") if quant.get("load_in_4bit") else None,
    }


def imported_versions() -> dict[str, str]:
    """The libraries' versions, of those the script imported."""
    out = {"python": platform.python_version()}
    for module in ("torch", "transformers", "peft", "bitsandbytes", "trl"):
        version = getattr(sys.modules.get(module), "__version__", None)
        if isinstance(version, str):
            out[module] = version
    return out


def dataset_rows(dataloader: Any) -> int | None:
    """Rows in an eval dataloader's dataset, when it has a length."""
    try:
        return len(dataloader.dataset)
    except (AttributeError, TypeError):
        return None


def script_memory_watch(
    sink: BackgroundSink, sampler: MemorySampler, model: Any, dataloader: Any, args: Any, gpu: Any, settings: Any
) -> Any:
    """The step-boundary memory work (OOM forecast, paged state, spills) of a script's run."""
    from loratop.core.oom_forecast import worst_batch_tokens
    from loratop.trainer.memory_watch import BatchRecorder, MemoryWatch

    batch = int(getattr(args, "per_device_train_batch_size", 1) or 1)
    recorder = BatchRecorder()
    if model is not None and hasattr(model, "register_forward_pre_hook"):
        recorder.attach(model)  # the batch the model runs, not the one collated ahead of it
    dataset: Any = getattr(dataloader, "dataset", None)
    lengths: list[int] = []
    if dataset is not None and "input_ids" in (getattr(dataset, "column_names", None) or []):
        with contextlib.suppress(Exception):
            lengths = [len(ids) for ids in dataset["input_ids"]]
    cap = getattr(args, "max_length", None) or (max(lengths) if lengths else 0)
    worst = worst_batch_tokens(lengths, batch, int(cap)) if lengths else 0
    optim = str(plain(getattr(args, "optim", "")))
    return MemoryWatch(
        sink.emit,
        sampler,
        recorder,
        gpu,
        worst,
        batch,
        paged_optimizer=optim.startswith("paged_"),
        knobs=settings.get("training") or {},
    )


def start_script_run(
    sink: BackgroundSink,
    run_dir: Path,
    rank: RankInfo,
    args: Any,
    state: Any,
    model: Any,
    hooks: dict[str, Any],
    cuda: bool,
    gpu: Any,
    memory_sample_hz: float,
) -> tuple[MemorySampler, Any, dict[str, Any]]:
    """The main process of a script's run begins: its ``run_started`` event (settings, model,
    device, the parameter audit, versions), a warning when not every step's loss is logged,
    and its memory sampling started (``gpu``: what the memory watch reads, ``None`` on a
    CPU). Returns the sampler, the memory watch and the device."""
    import torch

    device = device_info(torch, cuda)
    if rank.distributed:
        device.update(rank=rank.rank, world_size=rank.world_size)
    sampler = MemorySampler(sink.emit, memory_sample_hz)
    if cuda:
        from loratop.trainer.memory_watch import cuda_figures

        sampler.torch_stats = cuda_figures
    params: dict[str, Any] = {}
    if model is not None and hasattr(model, "get_nb_trainable_parameters"):
        from loratop.trainer.audit import audit_parameters

        peft = getattr(model, "peft_config", {}) or {}
        bias = next(iter(peft.values())).bias if peft else "none"
        params = audit_parameters(model, train_biases=bias != "none").as_event()
    settings = settings_of(args, model)
    if rank.distributed:
        per_node = max(1, rank.local_world_size)
        settings["distributed"] = {"nproc_per_node": per_node, "nnodes": max(1, rank.world_size // per_node)}
    logging_steps = getattr(args, "logging_steps", 1)
    sink.emit(
        ev.RUN_STARTED,
        run_name=run_dir.name,
        run_dir=str(run_dir),
        pid=os.getpid(),
        config=settings,
        model=model_info(model, settings),
        device=device,
        data={},
        max_steps=int(state.max_steps or 0),
        params=params,
        versions=imported_versions(),
    )
    if logging_steps != 1:
        sink.emit(
            ev.LOG,
            level="warning",
            message=f"logging_steps = {logging_steps}: loratop sees one loss every {logging_steps} steps "
            "(their mean); set logging_steps=1 for every step's own loss",
        )
    sampler.start()
    watch = script_memory_watch(sink, sampler, model, hooks.get("train_dataloader"), args, gpu, settings)
    return sampler, watch, device


__all__ = [
    "dataset_rows",
    "imported_versions",
    "model_info",
    "plain",
    "script_memory_watch",
    "settings_of",
    "start_script_run",
]
