"""loratop in an axolotl run, through axolotl's plugin mechanism.

In the axolotl config::

    plugins:
      - loratop.axolotl.LoratopPlugin

axolotl loads the class by that dotted name and calls its ``add_callbacks_post_trainer``,
which adds :class:`loratop.LoratopCallback` to the Trainer it built. The class is made on
first use, as a subclass of axolotl's ``BasePlugin``, so this module imports without
axolotl and names it when it is missing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LoratopPlugin"]  # noqa: F822 - made on first use (__getattr__)


def _plugin_class() -> type:
    try:
        from axolotl.integrations.base import BasePlugin
    except ImportError as exc:
        raise ImportError("loratop.axolotl.LoratopPlugin needs axolotl (pip install axolotl)") from exc

    from loratop.trainer.callback import LoratopCallback

    class LoratopPlugin(BasePlugin):
        """Adds ``LoratopCallback()`` (run folder under ``runs/``) to axolotl's Trainer."""

        def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list[Any]:
            return [LoratopCallback()]

    return LoratopPlugin


def __getattr__(name: str) -> Any:
    if name == "LoratopPlugin":
        return _plugin_class()
    raise AttributeError(f"module 'loratop.axolotl' has no attribute {name!r}")
