"""The screens' footer: every key of the screen in the compact style, and the command palette's
key and grouped keys only where the terminal has room for them."""

from __future__ import annotations

from collections.abc import Collection

from textual.app import ComposeResult
from textual.events import Resize
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

__all__ = ["KeyFooter"]

PALETTE_FROM = 100
"""From this many columns the footer also shows the command palette's key (``^p palette``)."""
WIDE_FROM = 120
"""From this many columns the footer also shows the keys a screen marks ``wide_only`` (the monitor's
``n next``): at 110 they would push ``? help`` off the edge."""
GROUPS_FROM = 110
"""From this many columns the footer also shows a screen's grouped keys (the monitor's loss-chart
cursor and zoom, ``[] cursor z0 zoom``); below, they would push its own keys off the edge."""


class KeyFooter(Footer):
    """A compact :class:`~textual.widgets.Footer` that leaves out the palette's key below
    :data:`PALETTE_FROM` columns and grouped keys (a :class:`~textual.binding.Binding.Group`)
    below :data:`GROUPS_FROM`, where they would push the screen's own keys off the edge (the
    help screen lists them all); and the keys of ``wide_only`` actions below :data:`WIDE_FROM`.

    Args:
        palette_from: The narrowest width, in columns, that shows the palette's key.
        groups_from: The narrowest width, in columns, that shows grouped keys.
        wide_only: Actions whose keys show only from ``wide_from`` columns (the help lists them).
        wide_from: The narrowest width, in columns, that shows the keys of ``wide_only``.
        id: The widget's DOM id.
    """

    DEFAULT_CSS = """
    KeyFooter.-compact KeyGroup.-compact {
        padding-left: 0;
    }
    KeyFooter.-compact FooterLabel {
        margin: 0 1 0 0;
    }
    KeyFooter.-no-groups KeyGroup, KeyFooter.-no-groups FooterLabel, KeyFooter.-no-wide FooterKey.-wide-only {
        display: none;
    }
    """

    def __init__(
        self,
        palette_from: int = PALETTE_FROM,
        groups_from: int = GROUPS_FROM,
        *,
        wide_only: Collection[str] = (),
        wide_from: int = WIDE_FROM,
        id: str | None = None,
    ) -> None:
        # Narrow until the first resize says otherwise: a first frame wider than the terminal would
        # push the screen's own keys (? help) off the edge.
        super().__init__(id=id, classes="-no-groups -no-wide", compact=True, show_command_palette=False)
        self.palette_from = palette_from
        self.groups_from = groups_from
        self.wide_only = frozenset(wide_only)
        """Actions whose key is left out below :attr:`wide_from` columns."""
        self.wide_from = wide_from

    def compose(self) -> ComposeResult:
        for widget in super().compose():
            if isinstance(widget, FooterKey) and widget.action in self.wide_only:
                widget.add_class("-wide-only")
            yield widget

    def on_resize(self, event: Resize) -> None:
        self.set_class(event.size.width < self.groups_from, "-no-groups")
        self.set_class(event.size.width < self.wide_from, "-no-wide")
        wide = event.size.width >= self.palette_from
        if wide != self.show_command_palette:
            self.show_command_palette = wide
            self.call_later(self.recompose)
