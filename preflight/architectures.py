"""What LoRA can target in a model, read from its ``config.json`` alone (no torch).

``loratop check`` uses this to reject a ``target_modules`` entry that the chosen
architecture does not have, before anything is downloaded or launched.
"""

from __future__ import annotations

from loratop.preflight.model_config import ModelConfigError, read_model_config

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

LINEAR_MODULES: dict[str, tuple[str, ...]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "granite": _LLAMA_LIKE,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "mixtral": ("q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3", "gate"),
}
"""Per ``model_type``: the names of the linear layers inside the language model that
LoRA usually targets. Architectures missing here are not checked up front; peft
checks them when the model loads."""

SPECIAL_TARGETS = ("all-linear",)
"""peft's shorthand for every linear layer but the output head."""


def model_type_of(name_or_path: str) -> str | None:
    """The ``model_type`` of a model, from its ``config.json``, without weights.

    Looks in a local folder, then in the Hugging Face cache
    (:func:`preflight.model_config.read_model_config`). Never downloads: a hub model that
    is not cached yet returns ``None`` (checked when it loads).

    Args:
        name_or_path: ``tiny``, a local folder, or a hub id.

    Returns:
        The model type, or ``None`` when the config cannot be read here.
    """
    try:
        data = read_model_config(name_or_path, download=False).data
    except ModelConfigError:
        return None
    model_type = data.get("model_type")
    return model_type if isinstance(model_type, str) else None
