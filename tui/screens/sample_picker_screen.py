"""Pick a shipped sample config to start a run from the home screen."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from loratop.preflight import samples
from loratop.preflight.samples import HardwareNeed

READING = "reading what it needs…"
"""A sample's second line until its needs are read (a worker: the configs, the model shapes, NVML)."""


def _prompt(name: str, need: HardwareNeed | None) -> Content:
    """The sample's name, and under it what it needs: green where it trains on this box."""
    if need is None:
        return Content.assemble(name, "\n  ", (READING, "$text-muted"))
    return Content.assemble(name, "\n  ", (need.text, "$text-success" if need.here else "$text-muted"))


class SamplePicker(ModalScreen[Path | None]):
    """A list of ``sample_configs/*.yaml``, each with what it needs to run (a CPU, or which GPUs);
    enter opens the highlighted one in the knob editor."""

    BINDINGS = [Binding("escape", "dismiss(None)", "cancel")]

    def __init__(self) -> None:
        super().__init__()
        self.needs: dict[str, HardwareNeed] | None = None
        """What each sample needs, by name, once read; ``None`` before."""

    def compose(self) -> ComposeResult:
        folder = samples.samples_dir()
        with Vertical(classes="dialog"):
            yield Static("Start from a sample: enter opens it in the knob editor · esc cancels")
            yield Static("this box: …", id="samples-box", markup=False)
            names = samples.sample_names() if folder else []
            options = [Option(_prompt(name, None), id=str(folder / f"{name}.yaml")) for name in names] if folder else []
            yield OptionList(*options, id="samples")

    def on_mount(self) -> None:
        self.read_needs()

    @work(thread=True, exclusive=True, group="sample-needs", exit_on_error=False)
    def read_needs(self) -> None:
        """Each sample's needs, against this box's GPU (NVML): file reads, off the UI thread."""
        from loratop.preflight.estimate import NO_GPU, fmt_size, visible_gpu_total

        total, name = visible_gpu_total()
        box = f"this box: {name} ({fmt_size(total)})" if total is not None else f"this box: {name}, CPU only"
        if total is None and name != NO_GPU:
            box = f"this box: GPU unknown ({name})"
        needs = samples.sample_needs(total, name if total is not None else "")
        self.app.call_from_thread(self._needs_read, box, needs)

    def _needs_read(self, box: str, needs: dict[str, HardwareNeed]) -> None:
        self.needs = needs
        self.query_one("#samples-box", Static).update(box)
        options = self.query_one("#samples", OptionList)
        folder = samples.samples_dir()
        for name, need in needs.items():
            if folder is not None:
                options.replace_option_prompt(str(folder / f"{name}.yaml"), _prompt(name, need))

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(Path(event.option.id) if event.option.id else None)
