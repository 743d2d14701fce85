"""The one lookup of a model's ``config.json``: the embedded tiny model, a local folder, the
Hugging Face cache, the shapes shipped with loratop for its sample models
(:data:`SHIPPED_SHAPES`), or the hub (``config.json`` alone, with a timeout).

``loratop check`` (through :func:`preflight.architectures.model_type_of`) asks without
downloading; ``loratop estimate`` and the advisor (through
:func:`preflight.estimate.load_model_shape`) may download. Either way no weights are read.

Standard library only: ``huggingface_hub`` is imported for a hub download alone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TINY = "tiny"
"""The name of the embedded model (built by :mod:`trainer.tiny_model`)."""

TINY_SPEC = {
    "vocab_size": 1024,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
"""The tiny Llama's shape: ~0.5M parameters, steps in tens of milliseconds on a CPU."""

TINY_CONFIG: dict[str, Any] = {"model_type": "llama", **TINY_SPEC, "tie_word_embeddings": False}
"""What the tiny model's ``config.json`` says about its shape, known before it is built."""

TINY_SOURCE = "the embedded tiny Llama (trainer/tiny_model.py)"

SHIPPED_SHAPES = Path(__file__).parent / "model_shapes.json"
"""The shape fields of the sample models' ``config.json`` (hub id → the keys the estimate and
the architecture check read, copied from the hub's file), so ``loratop estimate`` and
``loratop check`` know a sample's shape before anything is downloaded. A local folder or a
cached ``config.json`` is read first."""

HUB_CONNECT_TIMEOUT = 3.0
"""Seconds to find out whether the hub answers at all, before its client's retries."""


class ModelConfigError(Exception):
    """No readable ``config.json``; the message is one line for the user."""


@dataclass(frozen=True)
class ModelConfig:
    """A model's parsed ``config.json`` and where it was read from."""

    data: dict[str, Any]
    source: str
    """In words: a path, ``the Hugging Face cache``, the shape shipped with loratop
    (:data:`SHIPPED_SOURCE`), ``the hub (config.json only)``, or the tiny model."""


def is_hub_id(name: str) -> bool:
    """Whether a model name has the shape of a hub id (``org/name``), not of a path."""
    return not name.startswith(("/", ".", "~")) and name.count("/") == 1 and "\\" not in name


SHIPPED_SOURCE = "the copy of its config.json shipped with loratop (shape only, no download)"
"""Where a shape read from :data:`SHIPPED_SHAPES` came from, as the estimate says it beside the model's name."""


def shipped_config(repo_id: str) -> ModelConfig | None:
    """The shape fields of a sample model's ``config.json`` as loratop ships them, or ``None``
    for a model it does not ship (hub ids match whatever their case, as on the hub)."""
    try:
        shipped = json.loads(SHIPPED_SHAPES.read_text())
    except (OSError, ValueError):  # pragma: no cover - a broken install; the hub or the cache still serve
        return None
    for known, data in shipped.items():
        if known.lower() == repo_id.lower() and isinstance(data, dict):
            return ModelConfig(data, SHIPPED_SOURCE)
    return None


def read_model_config(name_or_path: str, *, download: bool = True) -> ModelConfig:
    """A model's ``config.json``, never its weights.

    A hub id is read from the Hugging Face cache, else from the shapes shipped for the sample
    models (:data:`SHIPPED_SHAPES`), else downloaded.

    Args:
        name_or_path: ``tiny``, a local folder (or a ``config.json`` file), or a hub id
            (``org/name``).
        download: For a hub id that is neither cached nor shipped, fetch its ``config.json``
            alone (not with ``HF_HUB_OFFLINE`` set; a hub that does not answer within
            :data:`HUB_CONNECT_TIMEOUT` fails at once).

    Raises:
        ModelConfigError: not found, unreadable, not a JSON object, or not downloadable.
    """
    if name_or_path == TINY:
        return ModelConfig(dict(TINY_CONFIG), TINY_SOURCE)
    name = name_or_path
    path = Path(name).expanduser()
    if path.is_file():
        return ModelConfig(_parse_json(path, name), str(path))
    if (path / "config.json").is_file():
        return ModelConfig(_parse_json(path / "config.json", name), str(path / "config.json"))
    prefix = f"cannot read config.json for {name}"
    if path.is_dir():
        raise ModelConfigError(f"{prefix}: the folder {path} has no config.json")
    if not is_hub_id(name):
        raise ModelConfigError(f"{prefix}: no such folder, and not a hub id (org/name)")
    cached = cached_hub_config(name)
    if cached is not None:
        return ModelConfig(_parse_json(cached, name), "the Hugging Face cache")
    shipped = shipped_config(name)
    if shipped is not None:
        return shipped
    if not download:
        raise ModelConfigError(f"{prefix}: not local and not in the Hugging Face cache")
    return ModelConfig(_parse_json(_download_config(name), name), "the hub (config.json only)")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
"""File endings of model weights, as ``from_pretrained`` finds them."""

FETCH_ADVICE = (
    "download it first where the hub is reachable (`hf download {name}`, then copy "
    "~/.cache/huggingface/hub here), log in for a gated model (`hf auth login`), or set "
    "model.name_or_path to a local folder"
)
"""How to get a model a run cannot fetch; ``{name}`` is the hub id."""


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, where ``HF_HUB_CACHE`` or ``HF_HOME`` put it."""
    return Path(
        os.environ.get("HF_HUB_CACHE")
        or os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    )


def has_weights(folder: Path) -> bool:
    """Whether a model folder (or a cache snapshot) holds weight files."""
    try:
        return any(entry.name.endswith(WEIGHT_SUFFIXES) for entry in folder.iterdir())
    except OSError:
        return False


def cached_hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub model's ``main`` revision, when it holds weights."""
    config = cached_hub_config(repo_id)
    if config is None or not has_weights(config.parent):
        return None
    return config.parent


def needs_download(name_or_path: str) -> bool:
    """Whether a run must fetch this model's weights from the hub (a hub id, not cached)."""
    if name_or_path == TINY or Path(name_or_path).expanduser().exists():
        return False
    if not is_hub_id(name_or_path):
        return False
    return cached_hub_snapshot(name_or_path) is None


def unavailable_model(name_or_path: str, *, probe: bool = True, timeout: float = HUB_CONNECT_TIMEOUT) -> str | None:
    """Why a run could not load this model's weights here, found within ``timeout`` seconds.

    Without this a run on an offline box sits at "loading" for the hub client's retries
    (about a minute) and ends in a traceback.

    Args:
        name_or_path: ``tiny``, a local folder, or a hub id.
        probe: Whether to try a connection to the hub (``loratop check`` does not: it never
            touches the network); without it only ``HF_HUB_OFFLINE`` makes a hub model
            unavailable.
        timeout: Seconds the hub has to answer.

    Returns:
        One line for the user (what is missing and how to get it), or ``None`` when the
        weights are local or cached, or the hub answers (it may still refuse a gated model:
        the run then says so).
    """
    if name_or_path == TINY:
        return None
    name = name_or_path
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return f"the folder {path} has no config.json"
        if not has_weights(path):
            return f"the folder {path} has no weights ({', '.join('*' + s for s in WEIGHT_SUFFIXES[:2])})"
        return None
    if not is_hub_id(name):
        return f"no such folder {path}, and not a hub id (org/name)"
    if cached_hub_snapshot(name) is not None:
        return None
    where = f"not a local folder and not in the Hugging Face cache ({hub_cache_dir()})"
    advice = FETCH_ADVICE.format(name=name)
    if offline_variable() is not None:
        return f"{where}, and HF_HUB_OFFLINE is set: {advice}"
    unreachable = hub_unreachable(timeout) if probe else None
    if unreachable:
        return f"{where}, and the hub is unreachable ({unreachable}): {advice}"
    return None


def cached_hub_config(repo_id: str) -> Path | None:
    """The cached ``config.json`` of a hub model, found the way huggingface_hub lays it out."""
    if repo_id.count("/") != 1:
        return None
    repo_dir = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    try:
        revision = ref.read_text().strip()
    except OSError:
        return None
    candidate = repo_dir / "snapshots" / revision / "config.json"
    return candidate if candidate.is_file() else None


def _parse_json(path: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelConfigError(f"cannot read config.json for {name}: {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"cannot read config.json for {name}: {path} is not a JSON object")
    return data


def _download_config(repo_id: str) -> Path:
    prefix = f"cannot read config.json for {repo_id}: not local, not cached, hub unreachable"
    if offline_variable() is not None:
        raise ModelConfigError(f"{prefix} (HF_HUB_OFFLINE is set)")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelConfigError(f"{prefix} (huggingface_hub is not installed)") from None
    unreachable = hub_unreachable()
    if unreachable:
        raise ModelConfigError(f"{prefix} ({unreachable})")
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would break the one-line error
    try:
        return Path(hf_hub_download(repo_id, "config.json"))
    except Exception as exc:  # huggingface_hub raises many kinds; each becomes one line
        kind = type(exc).__name__
        if kind == "GatedRepoError":
            raise ModelConfigError(
                f"cannot read config.json for {repo_id}: gated on the hub; accept its licence "
                "and run `huggingface-cli login`"
            ) from None
        if kind in ("RepositoryNotFoundError", "EntryNotFoundError", "RemoteEntryNotFoundError"):
            raise ModelConfigError(
                f"cannot read config.json for {repo_id}: no such model on the hub (or it is private)"
            ) from None
        raise ModelConfigError(f"{prefix} ({_root_cause(exc)})") from None
    finally:
        hub_logger.setLevel(level)


def offline_variable(*, datasets: bool = False) -> str | None:
    """The environment variable that keeps the Hugging Face libraries off the hub here, or ``None``.

    ``HF_HUB_OFFLINE`` set to a true value (``1``, ``ON``, ``YES``, ``TRUE``); for ``datasets``
    (``datasets=True``), ``HF_DATASETS_OFFLINE`` decides instead whenever it is set, as
    ``datasets`` reads it.
    """
    names = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if datasets else ("HF_HUB_OFFLINE",)
    for name in names:
        value = os.environ.get(name)
        if value is not None:
            return name if value.strip().upper() in ("1", "ON", "YES", "TRUE") else None
    return None


def hub_unreachable(timeout: float = HUB_CONNECT_TIMEOUT) -> str | None:
    """Why the hub cannot be reached, found in seconds rather than after the client's retries.

    Skipped behind a proxy (a direct connection says nothing about the proxied one).
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"cannot connect to {host}: {exc.strerror or exc}"
    return None


def _root_cause(exc: BaseException) -> str:
    """The innermost exception of a chain, as ``Type: first sentence``."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
    if len(text) > 100:
        text = text[:100].rsplit(" ", 1)[0] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
