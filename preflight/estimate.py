"""Pre-flight memory estimate: will this run fit, before any weights are downloaded?

``loratop estimate CONFIG`` reads only the model's ``config.json`` (a local folder, the
Hugging Face cache, or the hub when reachable) and prints what full fine-tuning, LoRA
on a 16-bit base and QLoRA would need on one GPU, against the visible GPU's memory.
Standard library only (``config.json`` is found by :mod:`preflight.model_config`, which
imports ``huggingface_hub`` for a hub download alone; the GPU's size comes from
:mod:`core.gpu_devices`, which imports ``pynvml`` when it opens NVML).

Every figure is in bytes; the printout uses GB = 10^9 bytes (nvidia-smi shows MiB;
1 GiB = 1.074 GB). The formulas, each a named function below:

Parameters (Llama-style dense block, per layer): q ``h × heads·hd``, k and v
``h × kv_heads·hd``, o ``heads·hd × h``, gate and up ``h × i``, down ``i × h``, two
RMSNorms ``2h`` (four for Gemma 2/3), plus biases where the architecture has them
(Qwen2: q, k and v; ``attention_bias``, ``mlp_bias``) and q/k norms (Qwen3, Gemma 3,
OLMo 2). A multimodal config counts its ``text_config`` only. Then embeddings
``v × h``, the output head ``v × h`` unless tied, and the final norm ``h``.

Full fine-tune, AdamW in mixed precision: 16 B/param = fp32 weights 4 + fp32 gradients
4 + Adam m 4 + Adam v 4, whatever ``training.optim`` says.

LoRA on a 16-bit base: every base parameter in the compute dtype (2 B; 4 for float32),
plus the adapters.

QLoRA: the blocks' linear weights in 4 bits (0.5 B/param) plus their quantization
constants: one absmax per block of 64 weights, fp32 (4/64 B/param), or with double
quant an 8-bit absmax per block plus one fp32 constant per 256 blocks
(1/64 + 4/(64·256) B/param). Everything else (embeddings, output head, norms, biases)
in float32: 4 B/param, because the trainer calls peft's
``prepare_model_for_kbit_training``, which upcasts every non-4-bit parameter to fp32.

Adapters (LoRA and QLoRA): ``r × (in + out)`` parameters per targeted linear (an
``A`` of ``r × in`` and a ``B`` of ``out × r``), in fp32 (peft upcasts 16-bit adapters),
with fp32 gradients (4 B) and the optimizer state of ``training.optim``: 8-bit AdamW
keeps m and v in one byte each (2 B/param) for tensors of at least 4096 elements and
in fp32 (8 B) below that (bitsandbytes' ``min_8bit_size``); 32-bit AdamW 8 B; the
8-bit blocks' own absmax (under 2%) is not counted. Paged state is counted as resident
on the GPU: it only leaves under memory pressure.

Activations for batch ``b`` and ``s`` = ``max_seq_length`` tokens (the worst case:
every sequence at full length), ``h`` hidden, ``L`` layers. Attention is assumed to run
through SDPA's memory-efficient or flash kernels, so there is no ``s²`` score term.
One layer's activations are taken as ``34·b·s·h`` bytes (Korthikanti et al. 2022, 16-bit
activations, without its ``5·heads·s²·b`` attention-score term). With gradient
checkpointing: one 16-bit hidden state per layer ``L·b·s·h·2`` plus one layer's full
activations while it is recomputed; without: ``L·34·b·s·h``. Logits: ``b·s·v·4·2``
(fp32 logits and their gradient). Plus a fixed 0.5 GB for the CUDA context and the
caching allocator's slack.

Not counted: transient dequantization buffers, the LoRA layers' saved inputs, the
vision tower of a multimodal model, fragmentation beyond the fixed overhead.

On N GPUs (:func:`per_gpu`), per GPU, each rank with its own ``per_device_train_batch_size``:
DDP replicates everything above on every GPU and adds its gradient buckets (the trainable
parameters' gradients once more, 4 B/param). FSDP (full shard) splits the model state
(weights, quantization constants, adapters, gradients, optimizer) N ways and adds the
all-gathered weights of the layers being computed: two layers' worth (the one in use and
the one prefetched), in the compute dtype for QLoRA (FSDP stores the 4-bit weights in it).
Activations, logits and the CUDA overhead are not shared.

Disk (:func:`disk_need`): the final ``adapter/`` holds the LoRA weights as saved, 2 B/param
for QLoRA (TRL's ``SFTTrainer`` casts a quantized model's adapters to bf16) and 4 B on a
16-bit base (peft's fp32); each ``checkpoint-N/`` holds them again, plus the optimizer
state as above and the Trainer's small files (:data:`CHECKPOINT_EXTRA_BYTES`). The Trainer
saves every ``training.save_steps`` steps and at the last step. Not counted: the tokenizer
files each checkpoint also gets (kB to tens of MB, by model), checkpoints asked for by
``SIGUSR1`` or ``monitor.on_spike = checkpoint``, ``events.jsonl`` and ``trainer.log``.
"""

from __future__ import annotations

import math
import shutil
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratop.core.gpu_devices import NO_NVIDIA_GPU, NVML_OK, GpuDevices
from loratop.preflight.model_config import ModelConfigError, read_model_config

if TYPE_CHECKING:
    from loratop.preflight.config import RunConfig

GB = 10**9
"""The unit of the printout: a decimal gigabyte."""
GIB = 2**30
"""A binary gibibyte, what nvidia-smi's MiB add up to."""

CUDA_OVERHEAD_BYTES = 500_000_000
"""Fixed allowance for the CUDA context (kernels, cuBLAS workspaces) and allocator slack."""

FULL_FT_BYTES_PER_PARAM = 16
"""fp32 weights 4 + fp32 gradients 4 + Adam m 4 + Adam v 4."""

QUANT_BLOCKSIZE = 64
"""bitsandbytes' 4-bit block size: one absmax per 64 weights."""
DOUBLE_QUANT_BLOCKSIZE = 256
"""Double quant: the absmaxes are quantized to 8 bits in blocks of 256, one fp32 constant each."""

MIN_8BIT_SIZE = 4096
"""bitsandbytes keeps 32-bit optimizer state for tensors with fewer elements than this."""

ADAPTER_BYTES = 4
"""LoRA weights are fp32 (peft upcasts 16-bit adapters); their gradients too."""

LAYER_ACTIVATION_FACTOR = 34
"""Bytes per ``batch × seq × hidden`` held by one layer's forward pass (no ``s²`` term)."""

LOGITS_BYTES = 4 * 2
"""fp32 logits and their gradient, per ``batch × seq × vocab`` element."""

NO_GPU = "no NVIDIA GPU"

BREAKDOWN_KEYS = (
    "weights",
    "quant_constants",
    "adapters",
    "gradients",
    "optimizer",
    "activations",
    "logits",
    "overhead",
)
"""The keys of :attr:`MethodEstimate.breakdown`, in printing order."""

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

_TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    # Gemma 3's multimodal config.json leaves class defaults out of text_config.
    "gemma3_text": {
        "vocab_size": 262_208,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "tie_word_embeddings": True,
    },
}
"""transformers' config-class defaults for keys a hub ``config.json`` may omit."""

_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text"}
"""Model types whose config class ties the output head to the embeddings unless told."""
_UNTIED_BY_DEFAULT = {"llama", "mistral", "qwen2", "qwen3", "olmo2", "granite", "phi3"}

_FOUR_NORMS = {"gemma2", "gemma3", "gemma3_text"}
"""Blocks with a norm before and after both attention and MLP."""

_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


class EstimateError(Exception):
    """The estimate cannot be made; the message is one line for the user."""


@dataclass(frozen=True)
class ModelShape:
    """The shape of a decoder-only language model, as ``config.json`` states it."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    model_type: str
    qkv_bias: bool = False
    """q, k and v projections have biases (Qwen2, or ``attention_bias``)."""
    o_bias: bool = False
    """The output projection has a bias (``attention_bias`` in Llama-style configs)."""
    mlp_bias: bool = False
    """gate, up and down have biases (``mlp_bias``)."""
    norms_per_layer: int = 2
    """RMSNorms of width ``hidden_size`` per block (Gemma 2/3: four)."""
    qk_norm_params: int = 0
    """Parameters of per-layer q/k norms (Qwen3, Gemma 3: ``2·head_dim``)."""
    source: str = ""
    """Where ``config.json`` was read from, in words."""
    notes: tuple[str, ...] = ()
    """What the reader assumed or left out, for the printout."""

    def linears(self) -> dict[str, tuple[int, int]]:
        """The linear layers of one block: name → (in features, out features)."""
        h, i = self.hidden_size, self.intermediate_size
        q_out = self.num_attention_heads * self.head_dim
        kv_out = self.num_key_value_heads * self.head_dim
        if self.model_type == "phi3":  # fused projections: same weights, fewer adapters
            return {
                "qkv_proj": (h, q_out + 2 * kv_out),
                "o_proj": (q_out, h),
                "gate_up_proj": (h, 2 * i),
                "down_proj": (i, h),
            }
        return {
            "q_proj": (h, q_out),
            "k_proj": (h, kv_out),
            "v_proj": (h, kv_out),
            "o_proj": (q_out, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }


@dataclass(frozen=True)
class ParamCounts:
    """The model's parameters, split by how QLoRA stores them."""

    linear: int
    """Weights of the blocks' linear layers (4-bit in QLoRA)."""
    embeddings: int
    lm_head: int
    """0 when tied to the embeddings."""
    norms: int
    biases: int

    @property
    def other(self) -> int:
        """Parameters QLoRA keeps unquantized: embeddings, output head, norms, biases."""
        return self.embeddings + self.lm_head + self.norms + self.biases

    @property
    def total(self) -> int:
        """Every parameter of the language model."""
        return self.linear + self.other


@dataclass(frozen=True)
class BreakdownLine:
    """One printed line of a breakdown: what, how it was computed, how many bytes."""

    label: str
    detail: str
    bytes: int


@dataclass
class MethodEstimate:
    """Peak memory of one fine-tuning method on one GPU."""

    key: str
    """``full``, ``lora`` or ``qlora``."""
    name: str
    breakdown: dict[str, int]
    """Bytes per :data:`BREAKDOWN_KEYS` entry."""
    lines: list[BreakdownLine] = field(default_factory=list)
    fits: bool | None = None
    """``None`` without a GPU to compare with."""
    headroom: int | None = None
    """GPU total minus this total (negative: that much over)."""

    @property
    def total(self) -> int:
        """Every byte of the breakdown."""
        return sum(self.breakdown.values())

    @property
    def model_state(self) -> int:
        """Weights, quantization constants, adapters, gradients and optimizer state."""
        keys = ("weights", "quant_constants", "adapters", "gradients", "optimizer")
        return sum(self.breakdown[k] for k in keys)


@dataclass
class Estimate:
    """The three methods for one model and one config, against one GPU."""

    shape: ModelShape
    params: ParamCounts
    rows: list[MethodEstimate]
    selected: str
    """The key of the method the config selects (``quantization.load_in_4bit``)."""
    name_or_path: str
    run: str
    """Batch, sequence, checkpointing, adapters and optimizer, in words."""
    gpu_total: int | None
    gpu_name: str
    notes: list[str]

    def row(self, key: str) -> MethodEstimate:
        """The row of ``full``, ``lora`` or ``qlora``."""
        return next(row for row in self.rows if row.key == key)


# --------------------------------------------------------------------------- config.json


def load_model_shape(name_or_path: str, *, download: bool = True) -> ModelShape:
    """The model's shape from its ``config.json``, never its weights.

    Args:
        name_or_path: ``tiny``, a local folder (or a ``config.json`` file), or a hub id.
            A hub model is read from the Hugging Face cache, else its ``config.json``
            alone is downloaded (not with ``HF_HUB_OFFLINE`` set); see
            :func:`preflight.model_config.read_model_config`.
        download: ``False``: a hub model that is not cached is an error, not a download.

    Raises:
        EstimateError: no readable ``config.json``, or a shape this estimate cannot count.
    """
    try:
        config = read_model_config(name_or_path, download=download)
    except ModelConfigError as exc:
        raise EstimateError(str(exc)) from None
    return shape_from_config(config.data, source=config.source, name=name_or_path)


def shape_from_config(data: Mapping[str, Any], *, source: str = "", name: str = "model") -> ModelShape:
    """Read a :class:`ModelShape` from a parsed ``config.json``.

    A multimodal config (Gemma 3) keeps the language model under ``text_config``:
    only that is counted, and a note says so.

    Raises:
        EstimateError: a key the count needs is missing, or a mixture-of-experts model.
    """
    notes: list[str] = []
    top_type = str(data.get("model_type") or "")
    text = data.get("text_config")
    if isinstance(text, Mapping):
        model_type = str(text.get("model_type") or top_type)
        merged: dict[str, Any] = {**_TEXT_DEFAULTS.get(model_type, {})}
        if "tie_word_embeddings" in data:
            merged["tie_word_embeddings"] = data["tie_word_embeddings"]
        merged.update({k: v for k, v in text.items() if v is not None})
        notes.append(
            f"{top_type or 'multimodal'} config: counted the language model (text_config) only; "
            "its vision tower is loaded too and is not counted"
        )
    else:
        model_type = top_type
        merged = {**_TEXT_DEFAULTS.get(model_type, {}), **{k: v for k, v in data.items() if v is not None}}

    for key in _MOE_KEYS:
        if isinstance(merged.get(key), int) and merged[key] > 1:
            raise EstimateError(
                f"{name}: a mixture-of-experts model ({key} = {merged[key]}); the estimate counts dense "
                "Llama-style blocks only"
            )

    def need(key: str) -> int:
        value = merged.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise EstimateError(f"config.json for {name}: {key} missing or not a positive integer; cannot estimate")
        return value

    hidden = need("hidden_size")
    heads = need("num_attention_heads")
    kv_heads = merged.get("num_key_value_heads") or heads
    head_dim = merged.get("head_dim") or hidden // heads
    if "tie_word_embeddings" in merged:
        tied = bool(merged["tie_word_embeddings"])
    else:
        tied = model_type not in _UNTIED_BY_DEFAULT
        if model_type not in _TIED_BY_DEFAULT | _UNTIED_BY_DEFAULT:
            notes.append("tie_word_embeddings not stated: assumed tied (transformers' default)")
    if model_type not in _TIED_BY_DEFAULT | _UNTIED_BY_DEFAULT:
        notes.append(f"model_type {model_type or '(none)'}: counted as Llama-style blocks, not checked")

    attention_bias = bool(merged.get("attention_bias", False))
    qk_norm = 0
    if model_type in ("qwen3", "gemma3", "gemma3_text"):
        qk_norm = 2 * head_dim
    elif model_type == "olmo2":
        qk_norm = (heads + kv_heads) * head_dim
    return ModelShape(
        vocab_size=need("vocab_size"),
        hidden_size=hidden,
        intermediate_size=need("intermediate_size"),
        num_hidden_layers=need("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=int(kv_heads),
        head_dim=int(head_dim),
        tie_word_embeddings=tied,
        model_type=model_type,
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(merged.get("mlp_bias", False)),
        norms_per_layer=4 if model_type in _FOUR_NORMS else 2,
        qk_norm_params=qk_norm,
        source=source,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- parameters


def count_parameters(shape: ModelShape) -> ParamCounts:
    """Count the language model's parameters, per layer then for the whole stack."""
    layers = shape.num_hidden_layers
    linear = sum(fan_in * fan_out for fan_in, fan_out in shape.linears().values())
    q_out = shape.num_attention_heads * shape.head_dim
    kv_out = shape.num_key_value_heads * shape.head_dim
    biases = 0
    if shape.qkv_bias:
        biases += q_out + 2 * kv_out
    if shape.o_bias:
        biases += shape.hidden_size
    if shape.mlp_bias:
        biases += 2 * shape.intermediate_size + shape.hidden_size
    norms = shape.norms_per_layer * shape.hidden_size + shape.qk_norm_params
    embeddings = shape.vocab_size * shape.hidden_size
    return ParamCounts(
        linear=layers * linear,
        embeddings=embeddings,
        lm_head=0 if shape.tie_word_embeddings else embeddings,
        norms=layers * norms + shape.hidden_size,  # + the final norm
        biases=layers * biases,
    )


def nf4_weight_bytes(numel: int) -> int:
    """Bytes of one tensor stored in 4 bits: two weights per byte."""
    return math.ceil(numel / 2)


def quant_constant_bytes(numel: int, double_quant: bool) -> int:
    """Bytes of one 4-bit tensor's quantization constants.

    One absmax per block of 64 weights: fp32 (4 B) per block, or with double quant an
    8-bit absmax per block plus one fp32 constant per 256 blocks.
    """
    blocks = math.ceil(numel / QUANT_BLOCKSIZE)
    if not double_quant:
        return blocks * 4
    return blocks + math.ceil(blocks / DOUBLE_QUANT_BLOCKSIZE) * 4


def adapter_tensors(shape: ModelShape, targets: list[str], r: int) -> tuple[list[tuple[int, int]], list[str]]:
    """The LoRA tensors of one block: ``A`` (r × in) and ``B`` (out × r) per targeted linear.

    Args:
        shape: The model.
        targets: ``lora.target_modules``; ``all-linear`` means every linear of the block.
        r: The LoRA rank.

    Returns:
        The (rows, cols) of each tensor in one layer, and the targets that are not a
        linear layer of this block (not counted).
    """
    linears = shape.linears()
    names = list(linears) if "all-linear" in targets else [t for t in targets if t in linears]
    unknown = [t for t in targets if t not in linears and t != "all-linear"]
    tensors: list[tuple[int, int]] = []
    for name in names:
        fan_in, fan_out = linears[name]
        tensors += [(r, fan_in), (fan_out, r)]
    return tensors, unknown


def adapter_param_count(shape: ModelShape, targets: list[str], r: int) -> int:
    """Adapter parameters in the whole model: layers × Σ r × (in + out)."""
    tensors, _ = adapter_tensors(shape, targets, r)
    return shape.num_hidden_layers * sum(rows * cols for rows, cols in tensors)


# --------------------------------------------------------------------------- optimizer

_EIGHT_BIT_STATES = {
    "paged_adamw_8bit": 2,
    "adamw_bnb_8bit": 2,
    "adamw_8bit": 2,
    "paged_ademamix_8bit": 3,
    "ademamix_8bit": 3,
    "paged_lion_8bit": 1,
    "lion_8bit": 1,
}
"""bitsandbytes 8-bit optimizers: states per parameter (1 byte each, fp32 when small)."""

_FP32_STATES = {
    "paged_adamw_32bit": 2,
    "adamw_torch": 2,
    "adamw_torch_fused": 2,
    "paged_ademamix_32bit": 3,
    "ademamix": 3,
    "paged_lion_32bit": 1,
    "lion_32bit": 1,
    "rmsprop": 1,
    "sgd": 0,  # transformers builds SGD without momentum: no state
}
"""Optimizers with fp32 state: states per parameter (4 bytes each)."""


def optimizer_state_bytes(tensors: list[tuple[int, int]], optim: str) -> int:
    """Optimizer state for trainable tensors of the given (rows, cols).

    8-bit bitsandbytes optimizers: 1 byte per state per element for tensors of at least
    :data:`MIN_8BIT_SIZE` elements, 4 bytes below. fp32 optimizers: 4 bytes per state.
    Adafactor (no momentum, as transformers builds it): a factored second moment,
    ``(rows + cols) × 4`` bytes per matrix.
    """
    if optim == "adafactor":
        return sum((rows + cols) * 4 for rows, cols in tensors)
    if optim in _EIGHT_BIT_STATES:
        states = _EIGHT_BIT_STATES[optim]
        return sum(rows * cols * states * (1 if rows * cols >= MIN_8BIT_SIZE else 4) for rows, cols in tensors)
    return sum(rows * cols * _FP32_STATES.get(optim, 2) * 4 for rows, cols in tensors)


def optimizer_rule(optim: str) -> str:
    """In words, what :func:`optimizer_state_bytes` assumed for ``optim``."""
    if optim == "adafactor":
        return "adafactor: factored 2nd moment, (rows+cols)×4 B"
    if optim in _EIGHT_BIT_STATES:
        states = _EIGHT_BIT_STATES[optim]
        return f"{optim}: {states} B/param, {4 * states} B if <{MIN_8BIT_SIZE} el."
    states = _FP32_STATES.get(optim, 2)
    if states == 0:
        return f"{optim}: no state"
    return f"{optim}: {4 * states} B/param ({states}×fp32)"


# --------------------------------------------------------------------------- activations


def layer_activation_bytes(batch: int, seq: int, hidden: int) -> int:
    """One transformer layer's saved activations: ``34 × b × s × h`` bytes (no ``s²`` term)."""
    return LAYER_ACTIVATION_FACTOR * batch * seq * hidden


def checkpointed_activation_bytes(layers: int, batch: int, seq: int, hidden: int) -> int:
    """With gradient checkpointing: one 16-bit hidden state per layer, plus one layer recomputed."""
    return layers * batch * seq * hidden * 2 + layer_activation_bytes(batch, seq, hidden)


def activation_bytes(shape: ModelShape, batch: int, seq: int, gradient_checkpointing: bool) -> int:
    """Activations of the whole stack, with or without gradient checkpointing."""
    layers, hidden = shape.num_hidden_layers, shape.hidden_size
    if gradient_checkpointing:
        return checkpointed_activation_bytes(layers, batch, seq, hidden)
    return layers * layer_activation_bytes(batch, seq, hidden)


def logits_bytes(shape: ModelShape, batch: int, seq: int) -> int:
    """fp32 logits and their gradient: ``b × s × vocab × 4 × 2`` bytes."""
    return batch * seq * shape.vocab_size * LOGITS_BYTES


# --------------------------------------------------------------------------- the estimate


def estimate(shape: ModelShape, config: RunConfig, gpu_total_bytes: int | None, gpu_name: str = NO_GPU) -> Estimate:
    """Peak memory of full fine-tuning, LoRA and QLoRA for this model and config.

    Args:
        shape: From :func:`load_model_shape`.
        config: The run config: adapters, batch, sequence length, checkpointing,
            optimizer, quantization.
        gpu_total_bytes: The GPU's total memory, or ``None`` when there is none.
        gpu_name: The GPU's name, or why there is none.
    """
    params = count_parameters(shape)
    t, q, lora = config.training, config.quantization, config.lora
    b, s, gc = t.per_device_train_batch_size, t.max_seq_length, t.gradient_checkpointing
    layers = shape.num_hidden_layers

    tensors, unknown = adapter_tensors(shape, lora.target_modules, lora.r)
    adapter_params = layers * sum(rows * cols for rows, cols in tensors)
    optimizer = layers * optimizer_state_bytes(tensors, t.optim)
    activations = activation_bytes(shape, b, s, gc)
    logits = logits_bytes(shape, b, s)
    bsh = f"{b}×{s}×{shape.hidden_size}"
    act_detail = f"ckpt: {layers}×{bsh}×2 B + 1 layer ×34" if gc else f"{layers} layers × {bsh} × 34 B"
    shared = [
        BreakdownLine("activations", act_detail, activations),
        BreakdownLine("logits", f"{b}×{s}×{shape.vocab_size} × 4 B × 2", logits),
        BreakdownLine("overhead", "CUDA context + allocator, fixed", CUDA_OVERHEAD_BYTES),
    ]
    n_targets = len(tensors) // 2
    adapter_lines = [
        BreakdownLine(
            "adapters", f"{_count(adapter_params)} (r={lora.r}, {n_targets} linears/layer) × 4 B", adapter_params * 4
        ),
        BreakdownLine("adapter grads", f"{_count(adapter_params)} × 4 B fp32", adapter_params * ADAPTER_BYTES),
        BreakdownLine("optimizer", optimizer_rule(t.optim), optimizer),
    ]

    def tail(weights: int, quant: int) -> dict[str, int]:
        return {
            "weights": weights,
            "quant_constants": quant,
            "adapters": adapter_params * ADAPTER_BYTES,
            "gradients": adapter_params * ADAPTER_BYTES,
            "optimizer": optimizer,
            "activations": activations,
            "logits": logits,
            "overhead": CUDA_OVERHEAD_BYTES,
        }

    # Full fine-tune: every parameter trains, fp32 master weights, AdamW.
    p = params.total
    full = MethodEstimate(
        key="full",
        name="full fine-tune, AdamW",
        breakdown={
            "weights": 4 * p,
            "quant_constants": 0,
            "adapters": 0,
            "gradients": 4 * p,
            "optimizer": 8 * p,
            "activations": activations,
            "logits": logits,
            "overhead": CUDA_OVERHEAD_BYTES,
        },
        lines=[
            BreakdownLine("weights", f"{_count(p)} × 4 B fp32", 4 * p),
            BreakdownLine("gradients", f"{_count(p)} × 4 B fp32", 4 * p),
            BreakdownLine("optimizer", f"AdamW m + v: {_count(p)} × 8 B", 8 * p),
            *shared,
        ],
    )

    # LoRA: the whole base in the compute dtype, frozen.
    dtype = q.bnb_4bit_compute_dtype
    width = _DTYPE_BYTES[dtype]
    base = p * width
    lora_row = MethodEstimate(
        key="lora",
        name=f"LoRA, {dtype} base",
        breakdown=tail(base, 0),
        lines=[BreakdownLine("base weights", f"{_count(p)} × {width} B {dtype}", base), *adapter_lines, *shared],
    )

    # QLoRA: the blocks' linear weights in 4 bits, the rest upcast to fp32 by peft.
    per_layer = shape.linears().values()
    packed = layers * sum(nf4_weight_bytes(fan_in * fan_out) for fan_in, fan_out in per_layer)
    dq = q.bnb_4bit_use_double_quant
    quant = layers * sum(quant_constant_bytes(fan_in * fan_out, dq) for fan_in, fan_out in per_layer)
    other = params.other * 4
    quant_name = q.bnb_4bit_quant_type.upper()
    qlora = MethodEstimate(
        key="qlora",
        name=f"QLoRA, {quant_name}" + (" + double quant" if dq else ""),
        breakdown=tail(packed + other, quant),
        lines=[
            BreakdownLine("4-bit weights", f"{_count(params.linear)} linear × 0.5 B", packed),
            BreakdownLine(
                "quant constants",
                "absmax/64 8-bit + fp32 per 256 blocks" if dq else "fp32 absmax per 64 weights",
                quant,
            ),
            BreakdownLine("other weights", f"{_count(params.other)} (embed, head, norms) × 4 B", other),
            *adapter_lines,
            *shared,
        ],
    )

    rows = [full, lora_row, qlora]
    for row in rows:
        if gpu_total_bytes is not None:
            row.headroom = gpu_total_bytes - row.total
            row.fits = row.headroom >= 0

    targets = "all-linear" if "all-linear" in lora.target_modules else f"{n_targets} modules"
    run = (
        f"batch {b} × {s} tokens, gradient checkpointing {'on' if gc else 'off'}; "
        f"LoRA r={lora.r} on {targets}; {t.optim}"
    )
    notes = [*shape.notes, *_notes(shape, params, config, unknown)]
    return Estimate(
        shape=shape,
        params=params,
        rows=rows,
        selected="qlora" if q.load_in_4bit else "lora",
        name_or_path=config.model.name_or_path,
        run=run,
        gpu_total=gpu_total_bytes,
        gpu_name=gpu_name,
        notes=notes,
    )


def _notes(shape: ModelShape, params: ParamCounts, config: RunConfig, unknown: list[str]) -> list[str]:
    notes = []
    if unknown:
        notes.append(f"target_modules not in a {shape.model_type} block, not counted: {', '.join(unknown)}")
    notes += [
        "Units: GB = 10^9 bytes (nvidia-smi shows MiB; 1 GiB = 1.074 GB).",
        "Full fine-tune: 16 B/param = fp32 weights 4 + gradients 4 + Adam m 4 + v 4.",
        "QLoRA: peft's prepare_model_for_kbit_training upcasts embeddings, head and norms to fp32.",
        "Adapters: fp32 weights and gradients; paged optimizer state counted as resident.",
        "Overhead: a fixed 0.5 GB for the CUDA context and allocator slack.",
        f"Activations: every sequence at max_seq_length ({config.training.max_seq_length}); SDPA/flash "
        "attention assumed (no seq² scores); 34 B × batch × seq × hidden per layer.",
        "Not counted: dequantization buffers, LoRA inputs saved for backward, fragmentation "
        "beyond the fixed overhead; the GPU's total is compared, other processes' use is not subtracted.",
    ]
    return notes


def _count(n: int) -> str:
    """A parameter count in words: ``6.74B``, ``40.0M``, ``1,024``."""
    if n >= 10**9:
        return f"{n / 1e9:.2f}B"
    if n >= 10**6:
        return f"{n / 1e6:.1f}M"
    return f"{n:,}"


def fmt_size(n: int, decimals: int = 1) -> str:
    """Bytes in decimal units: ``107.8 GB``, ``131.1 MB``, ``12.0 kB``, ``512 B``."""
    for unit, scale in (("GB", GB), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.{decimals}f} {unit}"
    return f"{n} B"


def fit_label(row: MethodEstimate, gpu_name: str = NO_GPU) -> str:
    """``fits (41.2 GB spare)``, ``does not fit (12.3 GB over)`` or why there is no answer."""
    if row.fits is None or row.headroom is None:
        return NO_GPU if gpu_name == NO_GPU else "GPU size unknown"
    if row.fits:
        return f"fits ({fmt_size(row.headroom)} spare)"
    return f"does not fit ({fmt_size(-row.headroom)} over)"


def _wrap(label: str, text: str, width: int = 80) -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=f"{label:<9}", subsequent_indent=" " * 9) or [label]


def format_estimate(est: Estimate) -> str:
    """The estimate as plain text, at most 80 columns wide.

    The three methods with their model state (weights, gradients, optimizer), total
    and fit against the GPU; the breakdown of the method the config selects; the notes.
    """
    shape, params = est.shape, est.params
    lines = ["Pre-flight memory estimate (GB = 10^9 bytes)"]
    lines += _wrap(
        "model", f"{est.name_or_path}: {shape.model_type}, {_count(params.total)} parameters, from {shape.source}"
    )
    lines += _wrap("run", est.run)
    if est.gpu_total is None:
        lines += _wrap("GPU", est.gpu_name)
    else:
        lines += _wrap("GPU", f"{est.gpu_name}: {fmt_size(est.gpu_total)} ({est.gpu_total / GIB:.1f} GiB)")
    lines.append("")

    header = ("method", "model state", "total", "on this GPU")
    cells = [
        (("* " if row.key == est.selected else "  ") + row.name, fmt_size(row.model_state), fmt_size(row.total))
        for row in est.rows
    ]
    w0 = max(len(header[0]) + 2, *(len(c[0]) for c in cells))
    w1 = max(len(header[1]), *(len(c[1]) for c in cells))
    w2 = max(len(header[2]), *(len(c[2]) for c in cells))
    lines.append(f"{'  ' + header[0]:<{w0}}  {header[1]:>{w1}}  {header[2]:>{w2}}  {header[3]}")
    for row, (name, state, total) in zip(est.rows, cells, strict=True):
        lines.append(f"{name:<{w0}}  {state:>{w1}}  {total:>{w2}}  {fit_label(row, est.gpu_name)}")
    lines.append("* this config")
    lines += textwrap.wrap(
        "model state = weights, quantization constants, adapters, gradients and optimizer state; "
        f"total adds activations, logits and {CUDA_OVERHEAD_BYTES / GB:g} GB of CUDA overhead.",
        width=80,
    )
    lines.append("")

    chosen = est.row(est.selected)
    lines.append(f"{chosen.name}: breakdown")
    for item in chosen.lines:
        lines.append(f"  {item.label:<17}{item.detail:<48}{fmt_size(item.bytes, 2):>11}")
    lines.append(f"  {'total':<17}{'':<48}{fmt_size(chosen.total, 2):>11}")
    lines.append("")
    lines.append("Notes")
    for note in est.notes:
        lines += textwrap.wrap(note, width=80, initial_indent="- ", subsequent_indent="  ")
    return "\n".join(lines)


# --------------------------------------------------------------------------- several GPUs


@dataclass(frozen=True)
class PerGpu:
    """One strategy's peak memory on each of ``gpus`` GPUs."""

    strategy: str
    """``ddp`` or ``fsdp``."""
    gpus: int
    total: int
    fits: bool | None
    headroom: int | None


def per_gpu(est: Estimate, gpus: int, key: str | None = None) -> list[PerGpu]:
    """Per-GPU peak of the config's method (or ``key``'s) on ``gpus`` GPUs, DDP and FSDP.

    See the module's notes: DDP replicates and adds gradient buckets; FSDP shards the model
    state and adds two layers of gathered weights.
    """
    row = est.row(key or est.selected)
    b = row.breakdown
    unshared = b["activations"] + b["logits"] + b["overhead"]
    ddp = row.total + b["gradients"]
    layers = max(1, est.shape.num_hidden_layers)
    per_layer_weights = (b["weights"] + b["quant_constants"]) // layers
    fsdp = row.model_state // gpus + 2 * per_layer_weights + unshared
    result = []
    for strategy, total in (("ddp", ddp), ("fsdp", fsdp if gpus > 1 else row.total)):
        headroom = None if est.gpu_total is None else est.gpu_total - total
        result.append(PerGpu(strategy, gpus, total, None if headroom is None else headroom >= 0, headroom))
    return result


def format_per_gpu(est: Estimate, gpus: int) -> list[str]:
    """Lines for ``loratop estimate`` on ``gpus`` GPUs: DDP and FSDP per GPU, which fits."""
    lines = [f"On {gpus} GPUs ({est.row(est.selected).name}), per GPU:"]
    for item in per_gpu(est, gpus):
        what = "DDP, replicated " if item.strategy == "ddp" else "FSDP, sharded   "
        if item.fits is None:
            verdict = "GPU size unknown" if est.gpu_name != NO_GPU else NO_GPU
        elif item.fits:
            verdict = f"fits ({fmt_size(item.headroom or 0)} spare)"
        else:
            verdict = f"does not fit ({fmt_size(-(item.headroom or 0))} over)"
        lines.append(f"  {what}  {fmt_size(item.total):>9}  {verdict}")
    ddp, fsdp = per_gpu(est, gpus)
    if ddp.fits is False and fsdp.fits:
        lines.append("  -> only FSDP fits: set distributed.strategy = fsdp")
    elif ddp.fits:
        lines.append("  -> DDP fits: it is the faster of the two (no weights gathered each layer)")
    return lines


# --------------------------------------------------------------------------- disk

QLORA_SAVED_ADAPTER_BYTES = 2
"""Bytes per adapter parameter on disk for QLoRA: TRL's ``SFTTrainer`` casts a quantized
model's LoRA weights to bf16 (the QLoRA paper's recipe). On a 16-bit base they stay fp32
(:data:`ADAPTER_BYTES`), as peft upcasts them."""

CHECKPOINT_EXTRA_BYTES = 64 * 1024
"""A checkpoint's small files: ``trainer_state.json``, ``rng_state.pth``, ``scheduler.pt``,
``training_args.bin``, the adapter's ``adapter_config.json`` and ``README.md``."""


@dataclass(frozen=True)
class DiskNeed:
    """What a run writes into its output folder, in bytes: the adapter and its checkpoints."""

    adapter: int
    """The final ``adapter/``: the LoRA weights as saved."""
    checkpoint: int
    """One ``checkpoint-N/``: the adapter again, the optimizer state and the Trainer's small files."""
    checkpoints: int | None
    """How many ``training.save_steps`` makes (0 when it is 0); ``None`` when the number of
    steps is unknown (epochs over a hub dataset, not fetched before the run)."""

    @property
    def total(self) -> int:
        """The adapter and every checkpoint; at least the last step's when their number is unknown."""
        return self.adapter + self.checkpoint * (1 if self.checkpoints is None else self.checkpoints)


def planned_steps(config: RunConfig, rows: int | None) -> int | None:
    """Optimizer steps the run makes: ``training.max_steps``, or epochs over ``rows`` as the
    Trainer counts them (``ceil(epochs × ceil(batches / accumulation))``); ``None`` if unknown."""
    t = config.training
    if t.max_steps > 0:
        return t.max_steps
    if rows is None:
        return None
    batches = math.ceil(rows / t.per_device_train_batch_size)
    return math.ceil(t.num_train_epochs * max(1, math.ceil(batches / t.gradient_accumulation_steps)))


def disk_need(shape: ModelShape, config: RunConfig, rows: int | None = None) -> DiskNeed:
    """Bytes the adapter and the checkpoints of this run take on disk (see the module's notes).

    Args:
        shape: From :func:`load_model_shape`.
        config: The adapters (``lora.r``, ``lora.target_modules``), ``quantization.load_in_4bit``,
            ``training.optim``, ``save_steps`` and the step count.
        rows: Rows the run trains on (:func:`preflight.data_files.usable_rows`), which count
            the steps when ``training.max_steps`` is -1.
    """
    t = config.training
    tensors, _ = adapter_tensors(shape, config.lora.target_modules, config.lora.r)
    width = QLORA_SAVED_ADAPTER_BYTES if config.quantization.load_in_4bit else ADAPTER_BYTES
    adapter = adapter_param_count(shape, config.lora.target_modules, config.lora.r) * width
    optimizer = shape.num_hidden_layers * optimizer_state_bytes(tensors, t.optim)
    steps = planned_steps(config, rows)
    if t.save_steps == 0:
        checkpoints: int | None = 0
    else:  # every save_steps steps, and the last step whatever it is
        checkpoints = None if steps is None else math.ceil(steps / t.save_steps)
    return DiskNeed(adapter=adapter, checkpoint=adapter + optimizer + CHECKPOINT_EXTRA_BYTES, checkpoints=checkpoints)


def _nearest_folder(path: Path) -> Path:
    """``path`` or the nearest of its parents that exists: where a new folder would be made."""
    for folder in (path, *path.parents):
        if folder.is_dir():
            return folder
    return Path(path.absolute().anchor)


def free_space_warning(output_dir: str | Path, need: DiskNeed) -> str | None:
    """One ``warning: ...`` line when the output folder's disk has less free space than
    ``need``, else ``None`` (also when the free space cannot be read).

    Args:
        output_dir: The run folder; it need not exist yet (its nearest existing parent's
            disk is the one asked).
        need: From :func:`disk_need`.
    """
    try:
        folder = _nearest_folder(Path(output_dir))
        free = shutil.disk_usage(folder).free
    except OSError:  # a name too long, an unreadable mount: the folder check says so
        return None
    if free >= need.total:
        return None
    name = str(folder) if str(folder).endswith("/") else f"{folder}/"
    parts = [f"adapter {fmt_size(need.adapter)}"]
    if need.checkpoints is None:
        parts.append(f"a checkpoint of {fmt_size(need.checkpoint)} every save_steps, how many unknown")
    elif need.checkpoints:
        plural = "s" if need.checkpoints != 1 else ""
        parts.append(f"{need.checkpoints} checkpoint{plural} of {fmt_size(need.checkpoint)}")
    amount = "at least" if need.checkpoints is None else "about"
    fewer = ", or raise training.save_steps for fewer checkpoints" if need.checkpoints != 0 else ""
    return (
        f"warning: {name} has {fmt_size(free)} free; this run writes {amount} {fmt_size(need.total)} "
        f"({' + '.join(parts)}); free some space{fewer}"
    )


# --------------------------------------------------------------------------- the GPU


def visible_gpu_total() -> tuple[int | None, str]:
    """Total memory and name of the GPU the run would train on: torch's ``cuda:0``.

    That is the first GPU ``CUDA_VISIBLE_DEVICES`` shows (an index, a ``GPU-`` UUID or
    its prefix, a ``MIG-`` UUID), read through :class:`core.gpu_devices.GpuDevices`.

    Returns:
        ``(bytes, name)``, or ``(None, "no NVIDIA GPU")`` when there is no driver,
        no ``pynvml`` or no visible device; ``(None, "NVML failed: ...")`` on other errors.
    """
    gpus = GpuDevices()
    try:
        if gpus.state == NO_NVIDIA_GPU:
            return None, NO_GPU
        if gpus.state != NVML_OK:
            return None, gpus.note
        return gpus.memory(0).total, gpus.name(0)
    except Exception as exc:  # pynvml builds its NVMLError subclasses at run time
        return None, f"NVML failed: {exc}"
    finally:
        gpus.close()
