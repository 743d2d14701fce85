"""Quitting while the trainer runs: stop it, or detach and leave it running."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class QuitScreen(ModalScreen[str | None]):
    """Quitting while the trainer runs: stop it, or leave it running."""

    BINDINGS = [
        Binding("escape", "dismiss(None)", "cancel"),
        Binding("s", "dismiss('stop')", "stop training"),
        Binding("d", "dismiss('detach')", "detach"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("The run is still training. Stop it (the adapter is saved), or detach and leave it running?")
            with Horizontal():
                # A label is markup: unescaped, "[s]" would be read as a style and vanish.
                yield Button(escape("Stop training [s]"), variant="error", id="stop")
                yield Button(escape("Detach [d]"), variant="primary", id="detach")
                yield Button(escape("Cancel [esc]"), id="cancel")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)
