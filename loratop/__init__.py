"""loratop: a terminal dashboard for QLoRA fine-tuning.

Its code imports as ``loratop.tui`` (the CLI and the dashboard), ``loratop.trainer`` (the
training subprocess and the torch-free modules it shares) and ``loratop.widgets``: names no
other package installs, so a ``trainer`` or ``tui`` package beside it, or a ``trainer.py``
in the working folder, changes nothing. The three folders stay at the repository root;
``loratop/tui``, ``loratop/trainer`` and ``loratop/widgets`` are links to them, so a source
checkout, an editable install, mypy and the wheel all see one ``loratop`` package.
"""

from typing import Any

__all__ = ["LoratopCallback", "__version__"]


def __getattr__(name: str) -> Any:
    """``from loratop import LoratopCallback``: imported on first use, so ``import loratop``
    (the CLI, the dashboard) never loads transformers."""
    if name == "LoratopCallback":
        from loratop.trainer.runtime.callback import LoratopCallback

        return LoratopCallback
    if name == "__version__":  # looked up on use: importlib.metadata costs the dashboard's start ~40 ms
        from importlib import metadata

        try:
            return metadata.version("loratop")
        except metadata.PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'loratop' has no attribute {name!r}")
