"""The screens' footer: every key of the screen in the compact style, and the command palette's
key only where the terminal has room for it."""

from __future__ import annotations

from textual.events import Resize
from textual.widgets import Footer

__all__ = ["KeyFooter"]

PALETTE_FROM = 100
"""From this many columns the footer also shows the command palette's key (``^p palette``)."""


class KeyFooter(Footer):
    """A compact :class:`~textual.widgets.Footer` that leaves out the palette's key below
    :data:`PALETTE_FROM` columns, where it would push the screen's own keys off the edge
    (the help screen names the palette's key instead).

    Args:
        palette_from: The narrowest width, in columns, that shows the palette's key.
        id: The widget's DOM id.
    """

    def __init__(self, palette_from: int = PALETTE_FROM, *, id: str | None = None) -> None:
        super().__init__(id=id, compact=True, show_command_palette=False)
        self.palette_from = palette_from

    def on_resize(self, event: Resize) -> None:
        wide = event.size.width >= self.palette_from
        if wide != self.show_command_palette:
            self.show_command_palette = wide
            self.call_later(self.recompose)
