"""The embedded ``tiny`` model: a small random-init Llama and a locally trained tokenizer.

No hub access: the tokenizer is trained with ``tokenizers`` on the embedded dataset
and the model is built from a config. Both are saved to a cache folder once and then
loaded like any local model, so the 4-bit loading path is the real one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loratop.preflight.data_files import EMBEDDED_DATASETS, load_rows
from loratop.preflight.model_config import TINY_SPEC

BUILDER_VERSION = 1
"""Bump when the builder changes, so old caches are not reused."""

SPEC = TINY_SPEC
"""The tiny Llama's shape (defined torch-free in :mod:`preflight.model_config`, which the
estimate reads without importing this builder)."""

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]


def cache_root() -> Path:
    """``$LORATOP_CACHE``, else ``$XDG_CACHE_HOME/loratop``, else ``~/.cache/loratop``."""
    if os.environ.get("LORATOP_CACHE"):
        return Path(os.environ["LORATOP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "loratop"


def _corpus_file() -> Path:
    return EMBEDDED_DATASETS["tool-chat"]


def cache_key(seed: int = 0) -> str:
    """A hash of everything the built model depends on."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"v": BUILDER_VERSION, "spec": SPEC, "seed": seed, "template": CHAT_TEMPLATE}).encode())
    digest.update(_corpus_file().read_bytes())
    return digest.hexdigest()[:16]


def _corpus() -> Iterator[str]:
    for row in load_rows(_corpus_file()):
        for message in row["messages"]:
            yield f"<|{message['role']}|>\n{message['content']}"


def tiny_model_dir(seed: int = 0) -> tuple[Path, bool]:
    """The folder of the tiny model, building it if it is not cached yet.

    Returns:
        The folder and whether it was built now (``False``: taken from the cache).
    """
    target = cache_root() / f"tiny-llama-{cache_key(seed)}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
    try:
        _build(staging, seed)
        try:
            os.replace(staging, target)
        except OSError:  # another run built it at the same moment; theirs is as good
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, True


def _build(folder: Path, seed: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    bpe = trainers.BpeTrainer(
        vocab_size=SPEC["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), bpe)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=SPEC["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    shape: dict[str, Any] = {**SPEC, "vocab_size": len(fast)}
    config = LlamaConfig(
        **shape,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
