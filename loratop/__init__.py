"""loratop: a terminal dashboard for QLoRA fine-tuning.

Its code imports as ``loratop.tui`` (the CLI and the dashboard), ``loratop.trainer`` (the
training subprocess and the torch-free modules it shares) and ``loratop.widgets``: names no
other package installs, so a ``trainer`` or ``tui`` package beside it, or a ``trainer.py``
in the working folder, changes nothing. The three folders stay at the repository root;
``loratop/tui``, ``loratop/trainer`` and ``loratop/widgets`` are links to them, so a source
checkout, an editable install, mypy and the wheel all see one ``loratop`` package.
"""

from importlib import metadata
from typing import Any

__all__ = ["LoratopCallback", "__version__"]

try:
    __version__ = metadata.version("loratop")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    """``from loratop import LoratopCallback``: imported on first use, so ``import loratop``
    (the CLI, the dashboard) never loads transformers."""
    if name == "LoratopCallback":
        from loratop.trainer.runtime.callback import LoratopCallback

        return LoratopCallback
    raise AttributeError(f"module 'loratop' has no attribute {name!r}")
