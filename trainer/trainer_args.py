"""What the Hugging Face Trainer of a launched run is given: TRL's ``SFTConfig`` from the
run's config, the DDP/FSDP settings of a run of several ranks, the attention kernel order of
``training.sdpa_backend``, and the refusal of packing for a model that cannot keep packed rows
apart. Plain functions: the run's config in, the Trainer's arguments out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from loratop.core import events as ev
from loratop.core.distributed import RankInfo, backend_for
from loratop.preflight.config import RunConfig
from loratop.trainer.user_error import UserFacingError


def build_trainer(
    config: RunConfig,
    run_dir: Path,
    rank: RankInfo,
    model: Any,
    tokenizer: Any,
    dataset: Any,
    eval_set: Any,
    cuda: bool,
    callbacks: list[Any],
    emit: Any,
) -> Any:
    """TRL's ``SFTTrainer`` for the run (``callbacks``: loratop's own, before the kernel order's)."""
    from trl import SFTConfig, SFTTrainer

    cfg = config
    t = cfg.training
    dtype = cfg.quantization.bnb_4bit_compute_dtype
    warmup: float | int = t.warmup_steps if t.warmup_steps < 1 else int(t.warmup_steps)
    if t.padding_free or t.packing:
        refuse_padding_free(model, "training.packing" if t.packing else "training.padding_free")
    kernels = sdpa_callbacks(t.sdpa_backend, cuda)
    args = SFTConfig(
        output_dir=str(run_dir),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=warmup,
        max_steps=t.max_steps,
        num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_length=t.max_seq_length,
        optim=t.optim,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        seed=t.seed,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=not cuda,
        # Every step is logged so each step's own loss reaches us (not a window
        # average), and NaN/Inf are not filtered: a NaN loss must show.
        logging_steps=1,
        logging_nan_inf_filter=False,
        include_num_input_tokens_seen="non_padding",
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        eval_strategy="steps" if eval_set is not None and t.eval_steps else "no",
        eval_steps=t.eval_steps or None,
        per_device_eval_batch_size=t.per_device_train_batch_size,
        prediction_loss_only=True,
        report_to=[],
        disable_tqdm=True,
        # Speed knobs (issue 25); each default is what the run did before they existed.
        pad_to_multiple_of=t.pad_to_multiple_of,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        # Best-fit packing keeps rows whole (one too long is truncated, as unpacked) and makes
        # TRL's collator padding-free, so rows never attend to each other.
        packing=t.packing,
        packing_strategy="bfd",
        # The eval rows stay unpacked: the eval loss is comparable with runs that do not pack.
        eval_packing=False,
        dataloader_num_workers=t.dataloader_num_workers,
        dataloader_pin_memory=t.dataloader_pin_memory,  # use_cpu turns it off on a CPU run
        **distributed_args(config, rank, cuda),
    )
    emit(ev.LOG, message=f"tokenising {len(dataset)} rows")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[*callbacks, *kernels],
    )
    if t.padding_free and not t.packing:
        # TRL refuses padding_free with max_length set (it would stop truncating rows), so TRL
        # prepares and truncates the rows as usual and the collator alone flattens each batch.
        collator: Any = trainer.data_collator  # TRL's DataCollatorForLanguageModeling, a dataclass
        trainer.data_collator = dataclasses.replace(collator, padding_free=True)
    return trainer


def distributed_args(config: RunConfig, rank: RankInfo, cuda: bool) -> dict[str, Any]:
    """The Trainer's DDP/FSDP settings; nothing for a single process."""
    if not rank.distributed:
        return {}
    d = config.distributed
    args: dict[str, Any] = {
        "ddp_backend": backend_for(d.backend, cuda),
        # A dead peer fails a collective within this, not torch's default 30 minutes.
        "ddp_timeout": d.timeout_s,
        "ddp_find_unused_parameters": False,
    }
    if d.strategy == "fsdp":
        # FSDP2 (transformers' default): each decoder layer its own shard unit (the wrap
        # policy falls back to the model's _no_split_modules), parameters resharded after
        # the forward pass, rank 0 loading the checkpoint and broadcasting it, and the
        # adapter saved as one ordinary file.
        args["fsdp"] = True
        args["fsdp_config"] = {
            "version": 2,
            "reshard_after_forward": True,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "cpu_ram_efficient_loading": True,
            "state_dict_type": "FULL_STATE_DICT",
        }
    return args


PADDING_FREE_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
"""Attention implementations that keep the rows of a flattened (padding-free) batch apart by
their position ids: transformers' masks for sdpa, eager and flex attention, the varlen kernels
of flash attention."""

SDPA_KERNELS = {
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "math": "MATH",
}
"""``training.sdpa_backend`` → torch's ``SDPBackend`` member."""


def refuse_padding_free(model: Any, knob: str) -> None:
    """``training.padding_free`` and ``training.packing`` flatten a batch into one row: refuse a
    model whose attention might let its rows see each other (the loss would be wrong, silently)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    attention = getattr(base.config, "_attn_implementation", None)
    if not type(base).__module__.startswith("transformers."):
        why = f"{name} runs the model's own code (trust_remote_code), which may not keep packed rows apart"
    elif attention not in PADDING_FREE_ATTENTION:
        needs = ", ".join(PADDING_FREE_ATTENTION)
        why = f"{name}'s attention {attention!r} cannot keep packed rows apart; it needs {needs}"
    else:
        return
    raise UserFacingError(f"{knob} = true: {why}; accepted for this model: false")


def sdpa_gpu_problem(backend: str, torch: Any) -> str | None:
    """Why ``training.sdpa_backend`` cannot run on this process's GPU, or ``None``."""
    major, minor = torch.cuda.get_device_capability()
    gpu = f"the {torch.cuda.get_device_name()} (sm{major}{minor})"
    instead = "accepted here: auto, efficient, math"
    if backend in ("flash", "cudnn") and major < 8:
        return f"training.sdpa_backend = {backend!r}: needs an Ampere or later GPU (sm80+), not {gpu}; {instead}"
    if backend == "flash" and not torch.backends.cuda.is_flash_attention_available():
        return f"training.sdpa_backend = 'flash': this PyTorch build has no flash attention kernel; {instead}"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if backend == "cudnn" and (cudnn is None or cudnn < 90000):
        has = cudnn or "none"
        return f"training.sdpa_backend = 'cudnn': needs cuDNN 9 or later (this PyTorch has {has}); {instead}"
    return None


def sdpa_callbacks(backend: str, cuda: bool) -> list[Any]:
    """The Trainer callback that holds ``training.sdpa_backend``'s kernel order from the start of
    training to its end (evaluations during training included); none for ``auto``.

    The named kernel comes first; where it cannot run a call (flash takes no padding mask), the
    others follow in PyTorch's order, never cuDNN unless named: its per-shape graphs are what
    the other choices avoid. ``math`` runs alone. The flags are PyTorch's global ones, so the
    backward pass and gradient checkpointing's recomputation run under them too.
    """
    if backend == "auto":
        return []
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import TrainerCallback

    from loratop.preflight.config import sdpa_cpu_problem

    problem = sdpa_gpu_problem(backend, torch) if cuda else sdpa_cpu_problem(backend)
    if problem is not None:
        raise UserFacingError(problem)
    first = getattr(SDPBackend, SDPA_KERNELS[backend])
    others = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    order = [first] if first == SDPBackend.MATH else [first, *(k for k in others if k != first)]

    class SdpaPreference(TrainerCallback):
        def __init__(self) -> None:
            self.held: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.held = sdpa_kernel(order, set_priority=True)
            self.held.__enter__()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.held is not None:  # restores PyTorch's own order (the process may train again)
                self.held.__exit__(None, None, None)
                self.held = None

    return [SdpaPreference()]


__all__ = [
    "PADDING_FREE_ATTENTION",
    "SDPA_KERNELS",
    "build_trainer",
    "distributed_args",
    "refuse_padding_free",
    "sdpa_callbacks",
    "sdpa_gpu_problem",
]
