"""Pick a shipped sample config to start a run from the home screen."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from loratop.tui import samples


class SamplePicker(ModalScreen[Path | None]):
    """A list of ``sample_configs/*.yaml``; enter opens the highlighted one in the knob editor."""

    BINDINGS = [Binding("escape", "dismiss(None)", "cancel")]

    def compose(self) -> ComposeResult:
        folder = samples.samples_dir()
        with Vertical(classes="dialog"):
            yield Static("Start from a sample config: enter opens it in the knob editor · esc cancels")
            names = samples.sample_names() if folder else []
            options = [Option(Content(name), id=str(folder / f"{name}.yaml")) for name in names] if folder else []
            yield OptionList(*options, id="samples")

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(Path(event.option.id) if event.option.id else None)
