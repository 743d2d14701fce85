"""The keys, on one page (``?``), built from the screens' ``BINDINGS``."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Static

from loratop.tui.screens.key_help import KeyHelp, key_help, key_label

SESSION_NOTE = "The trainer runs in its own session: closing this terminal or losing the SSH link never stops it."


class HelpScreen(ModalScreen[None]):
    """One screen's keys with what each does, other screens' keys in a line each, and the palette's key.

    It fits an 80×24 terminal whole; how to close it is on its first line.
    """

    BINDINGS = [Binding("escape,q,question_mark", "dismiss(None)", "close")]

    def __init__(self, keys: Sequence[KeyHelp], elsewhere: Sequence[tuple[str, Sequence[KeyHelp]]] = ()) -> None:
        """Show ``keys`` (a screen's, from :func:`~tui.screens.key_help.active_key_help`) in full,
        and each ``(title, keys)`` of ``elsewhere`` in brief."""
        super().__init__()
        self._keys = keys
        self._elsewhere = elsewhere

    def compose(self) -> ComposeResult:
        closes = " or ".join(row.keys for row in key_help(self.BINDINGS))
        with VerticalScroll(classes="dialog", id="help"):
            yield Static(f"[b]loratop keys[/b]  [dim]{escape(closes)} closes this help[/dim]")
            yield Static(self.key_table())
            for title, rows in self._elsewhere:
                brief = " · ".join(f"{row.keys} {row.label}" for row in rows)
                yield Static(escape(f"{title}: {brief}"), classes="help-brief")
            yield Static(escape(SESSION_NOTE), classes="help-note")  # no blank line above: 80×24 holds it all

    def key_table(self) -> Table:
        """Each key and what it does, then the command palette's key."""
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True)
        table.add_column()
        for row in self._keys:
            table.add_row(row.keys, row.text)
        table.add_row(key_label(self.app.COMMAND_PALETTE_BINDING), "command palette: every action by name")
        return table
