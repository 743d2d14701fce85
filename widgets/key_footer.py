"""The screens' footer: every key of the screen in the compact style, and the command palette's
key and grouped keys only where the terminal has room for them."""

from __future__ import annotations

from textual.events import Resize
from textual.widgets import Footer

__all__ = ["KeyFooter"]

PALETTE_FROM = 100
"""From this many columns the footer also shows the command palette's key (``^p palette``)."""
GROUPS_FROM = 110
"""From this many columns the footer also shows a screen's grouped keys (the monitor's loss-chart
cursor and zoom, ``[] cursor z0 zoom``); below, they would push its own keys off the edge."""


class KeyFooter(Footer):
    """A compact :class:`~textual.widgets.Footer` that leaves out the palette's key below
    :data:`PALETTE_FROM` columns and grouped keys (a :class:`~textual.binding.Binding.Group`)
    below :data:`GROUPS_FROM`, where they would push the screen's own keys off the edge (the
    help screen lists them all).

    Args:
        palette_from: The narrowest width, in columns, that shows the palette's key.
        groups_from: The narrowest width, in columns, that shows grouped keys.
        id: The widget's DOM id.
    """

    DEFAULT_CSS = """
    KeyFooter.-compact KeyGroup.-compact {
        padding-left: 0;
    }
    KeyFooter.-compact FooterLabel {
        margin: 0 1 0 0;
    }
    KeyFooter.-no-groups KeyGroup, KeyFooter.-no-groups FooterLabel {
        display: none;
    }
    """

    def __init__(
        self, palette_from: int = PALETTE_FROM, groups_from: int = GROUPS_FROM, *, id: str | None = None
    ) -> None:
        super().__init__(id=id, compact=True, show_command_palette=False)
        self.palette_from = palette_from
        self.groups_from = groups_from

    def on_resize(self, event: Resize) -> None:
        self.set_class(event.size.width < self.groups_from, "-no-groups")
        wide = event.size.width >= self.palette_from
        if wide != self.show_command_palette:
            self.show_command_palette = wide
            self.call_later(self.recompose)
