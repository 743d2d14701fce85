"""What LoRA can target in a model, read from its ``config.json`` alone (no torch).

``loratop check`` uses this to reject a ``target_modules`` entry that the chosen
architecture does not have, before anything is downloaded or launched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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

TINY_MODEL_TYPE = "llama"
"""The embedded ``tiny`` model is a Llama."""


def model_type_of(name_or_path: str) -> str | None:
    """The ``model_type`` of a model, from its ``config.json``, without weights.

    Looks in a local folder, then in the Hugging Face cache. Never downloads: a
    hub model that is not cached yet returns ``None`` (checked when it loads).

    Args:
        name_or_path: ``tiny``, a local folder, or a hub id.

    Returns:
        The model type, or ``None`` when the config cannot be read here.
    """
    if name_or_path == "tiny":
        return TINY_MODEL_TYPE
    config_file = Path(name_or_path) / "config.json"
    if not config_file.is_file():
        cached = _cached_hub_config(name_or_path)
        if cached is None:
            return None
        config_file = cached
    try:
        data = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    model_type = data.get("model_type") if isinstance(data, dict) else None
    return model_type if isinstance(model_type, str) else None


def _cached_hub_config(repo_id: str) -> Path | None:
    """The cached ``config.json`` of a hub model, found the way huggingface_hub lays it out."""
    if repo_id.count("/") != 1:
        return None
    hub_cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    repo_dir = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    try:
        revision = ref.read_text().strip()
    except OSError:
        return None
    candidate = repo_dir / "snapshots" / revision / "config.json"
    return candidate if candidate.is_file() else None
