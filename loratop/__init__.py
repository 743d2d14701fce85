"""loratop: a terminal dashboard for QLoRA fine-tuning.

Its code imports as ``loratop.<home>``, one home per concern, each a folder at the repository
root that ``loratop/<home>`` links to (so a source checkout, an editable install, mypy and the
wheel all see one ``loratop`` package, and a ``trainer`` or ``tui`` package beside it, or a
``trainer.py`` in the working folder, changes nothing). From the ground up:

- ``core``: the torch-free core (the event protocol, the run folder and model, the detectors);
- ``widgets``: reusable Textual widgets (charts, the memory panel, the footer);
- ``preflight``: everything before a trainer starts (config schema, estimates, advisor, launch);
- ``trainer``: the training subprocess and the callback API, the only home that imports torch;
- ``tui``: the dashboard (``models`` it draws, ``screens``, the App);
- ``cli``: the ``loratop`` command line, its ``--no-tui`` printer and ``loratop serve``.

``scripts/import_graph.py`` draws the house from its imports; ``tests/test_layers.py`` keeps
every import pointing down.
"""

from typing import Any

__all__ = ["LoratopCallback", "__version__"]


def __getattr__(name: str) -> Any:
    """``from loratop import LoratopCallback``: imported on first use, so ``import loratop``
    (the CLI, the dashboard) never loads transformers."""
    if name == "LoratopCallback":
        from loratop.trainer.callback import LoratopCallback

        return LoratopCallback
    if name == "__version__":  # looked up on use: importlib.metadata costs the dashboard's start ~40 ms
        from loratop.core.version import loratop_version

        return loratop_version()
    raise AttributeError(f"module 'loratop' has no attribute {name!r}")
