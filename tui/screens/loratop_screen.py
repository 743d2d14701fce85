"""The base of the screens that call back into the dashboard (open the editor, export, launch).

A screen knows the App only as a :class:`Dashboard`: the few calls it makes. The App
(``tui/app.py``) imports the screens; a screen never imports the App, so the two stay one
floor apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from textual.screen import Screen
from textual.worker import Worker

if TYPE_CHECKING:
    from loratop.core.run_state import RunState
    from loratop.preflight.config import RunConfig

ResultT = TypeVar("ResultT")


@runtime_checkable
class Dashboard(Protocol):
    """What a screen may ask of the loratop App (:class:`loratop.tui.app.LoratopApp` is one)."""

    ended_on: Path | None
    """The run whose monitor the dashboard ended on (``loratop attach`` names it on detach)."""

    def open_editor(self, target: Path) -> bool:
        """Open the knob editor on a run folder or a config file; ``False`` when it cannot."""
        ...

    def open_next_run(self, run_dir: Path, state: RunState | None = None) -> bool:
        """Open the knob editor with a finished run's next-run proposals applied; ``False`` when
        there are none (a notice says so) or it cannot."""
        ...

    def launch_config(
        self, config: RunConfig, source: Path | None, replace: Screen[Any] | None = None
    ) -> Worker[Path | None]:
        """Check and launch a config on a worker, then watch it; the worker's result is the run
        folder, or ``None`` when it could not start."""
        ...

    def export_run(self, run_dir: Path, screen: bool = True) -> Worker[list[Path]]:
        """Write a run's metrics CSV and events JSONL (and this screen's SVG) on a worker, whose
        result is the files written."""
        ...

    def watch_run(self, screen: Screen[Any], run_dir: Path) -> None:
        """Watch a run on a thread the App owns and post its events and its trainer's fate to
        ``screen``: through the pipe of a trainer this dashboard launched (the App holds it
        for the screen until then), else by following the run's file."""
        ...

    def stop_watching(self, screen: Screen[Any]) -> None:
        """Stop the watcher that posts to ``screen`` (it goes); its run trains on."""
        ...


class LoratopScreen(Screen[ResultT]):
    """A screen of the loratop dashboard: ``self.loratop`` is its App, typed as a :class:`Dashboard`."""

    @property
    def loratop(self) -> Dashboard:
        """The running App, as the :class:`Dashboard` it is.

        Raises:
            TypeError: the screen is mounted in some other App.
        """
        app = self.app
        if not isinstance(app, Dashboard):
            raise TypeError(f"{type(self).__name__} needs the loratop App, not {type(app).__name__}")
        return app

    @property
    def has_screen_below(self) -> bool:
        """Whether this screen was opened over another of the dashboard's (the run history), so that
        ``esc`` goes back to it; ``False`` for the first screen (``loratop attach``, ``loratop edit``)."""
        stack = self.app.screen_stack
        return self in stack and stack.index(self) > 1  # stack[0] is Textual's own default screen
