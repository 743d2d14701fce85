"""The base of the screens that call back into the dashboard (open the editor, export, launch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from textual.screen import Screen

if TYPE_CHECKING:
    from loratop.tui.app import LoratopApp

ResultT = TypeVar("ResultT")


class LoratopScreen(Screen[ResultT]):
    """A screen of the loratop dashboard: ``self.loratop`` is its App, typed."""

    @property
    def loratop(self) -> LoratopApp:
        """The running :class:`~tui.app.LoratopApp` (``self.app``, with its own methods visible to the type checker).

        Raises:
            TypeError: the screen is mounted in some other App.
        """
        from loratop.tui.app import LoratopApp  # tui.app imports the screens; by the time one runs, it is loaded

        app = self.app
        if not isinstance(app, LoratopApp):
            raise TypeError(f"{type(self).__name__} needs the loratop App, not {type(app).__name__}")
        return app

    @property
    def has_screen_below(self) -> bool:
        """Whether this screen was opened over another of the dashboard's (the run history), so that
        ``esc`` goes back to it; ``False`` for the first screen (``loratop attach``, ``loratop edit``)."""
        stack = self.app.screen_stack
        return self in stack and stack.index(self) > 1  # stack[0] is Textual's own default screen
