"""The keys, on one page (``?`` in a run's monitor), built from the screens' ``BINDINGS``."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Static

from loratop.tui.screens.key_help import key_help, key_label

SESSION_NOTE = "The trainer runs in its own session: closing this terminal or losing the SSH link never stops it."


class HelpScreen(ModalScreen[None]):
    """One screen's keys with what each does, other screens' keys in a line each, and the palette's key."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss(None)", "close")]

    def __init__(
        self, keys: Sequence[BindingType], elsewhere: Sequence[tuple[str, Sequence[BindingType]]] = ()
    ) -> None:
        """Show ``keys`` (a screen's ``BINDINGS``) in full, and each ``(title, bindings)`` of ``elsewhere`` in brief."""
        super().__init__()
        self._keys = keys
        self._elsewhere = elsewhere

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog", id="help"):
            yield Static("[b]loratop keys[/b]\n")
            yield Static(self.key_table())
            for title, bindings in self._elsewhere:
                brief = " · ".join(f"{row.keys} {row.label}" for row in key_help(bindings))
                yield Static(escape(f"\n{title}: {brief}"))
            closes = " or ".join(row.keys for row in key_help(self.BINDINGS))
            yield Static(f"\n{escape(SESSION_NOTE)}  [dim]{escape(closes)} closes this help[/dim]")

    def key_table(self) -> Table:
        """Each key and what it does, then the command palette's key."""
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True)
        table.add_column()
        for row in key_help(self._keys):
            table.add_row(row.keys, row.text)
        table.add_row(key_label(self.app.COMMAND_PALETTE_BINDING), "command palette: every action by name")
        return table
