"""The keys, on one page (``?`` in a run's monitor)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]loratop keys[/b]

  s   stop training gracefully (asks first; the adapter is saved)
  c   save a checkpoint now (at the next step boundary)
  d   detach: leave the run going and quit (loratop attach brings it back)
  q   quit (asks stop or detach while the run trains)
  l   loss chart: log scale on/off
  g   show/hide the trainer's log (trainer.log)
  e   rerun with changes: the knob editor on this run's config
  x   export: metrics CSV, events JSONL and this screen as SVG
  ?   this help
  ctrl+p  command palette: every action by name

Home screen: enter opens a run · e edits one · space marks runs and c
compares them (or a run with its parent) · o changes the sort · n starts
from a sample.

The trainer runs in its own session: closing this terminal or losing the SSH
link never stops it.  [dim]esc closes this help[/dim]"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss(None)", "close")]

    def compose(self) -> ComposeResult:
        yield Static(HELP, classes="dialog")
