"""One run, live: the loss chart, LR, parameters, memory, events, the trainer's log and the outcome.

The App's :class:`~loratop.tui.models.run_watcher.RunWatcher` reads the run's events (the
trainer's pipe, or ``events.jsonl`` followed live) and its trainer's fate on its own thread, and
posts them here as messages; handlers fold them into a plain :class:`RunState`; a 4 Hz timer
pushes what changed to the widgets. The data rate never sets the redraw rate. The screen reads
no events itself and records nothing: it draws.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical
from textual.content import Content
from textual.widgets import Sparkline, Static
from textual.worker import get_current_worker

from loratop.core import events as ev
from loratop.core.run_dir import (
    LOG,
    proven_trainer_pid,
    read_status,
    request_control,
    signal_target,
    why_not_proven,
)
from loratop.core.run_state import PAUSED, RUNNING, RunState
from loratop.tui.models import panels
from loratop.tui.models.log_lines import KNOWN, METRICS, SOURCE, LogLine, LogReader
from loratop.tui.models.messages import (
    EventsArrived,
    FolderRemoved,
    Replayed,
    TrainerGone,
    TrainerNotProven,
    TrainerPaused,
    WatchFailed,
)
from loratop.tui.screens.confirm_screen import ConfirmScreen
from loratop.tui.screens.loratop_screen import LoratopScreen
from loratop.tui.screens.quit_screen import QuitScreen
from loratop.widgets import KeyFooter, LossChart, MemoryPanel
from loratop.widgets.downsample import RunningEma, smoothing_alpha

if TYPE_CHECKING:
    from textual.widgets import RichLog

NARROW = 100
"""Below this many columns the side panels stack under the chart."""
SHORT = 30
"""Below this many rows the log pane is shorter and, while it shows, takes the lr and parameter panels' place."""
REFRESH_HZ = 4
DATA_REFRESH_S = 1.0
"""While a run trains, its header, chart and panels are redrawn at most this often."""
SPARK_REFRESH_S = 5.0
"""While a run trains, the lr and memory sparklines are redrawn at most this often."""
LOG_LINES = 500
"""The log pane keeps the trainer's log's latest lines, this many (``trainer.log`` has them all):
shown again, or resized, it wraps them all anew, ~0.1-0.4 ms a line."""
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""Control characters of a log line (an escape sequence would reach the terminal raw): shown as ``�``."""


CURSOR_KEYS = Binding.Group("cursor", compact=True)
ZOOM_KEYS = Binding.Group("zoom", compact=True)
"""The loss chart's keys: grouped in the footer, which leaves groups out where it is short of room."""
CURSOR_BACK = "loss chart: cursor back (says its step, loss and lr)"
CURSOR_ON = "loss chart: cursor on (at first: on the latest step)"
ZOOM_IN = "loss chart: zoom in 4× on the cursor (without one: the latest steps)"

# How a dashboard session ended, returned by App.run().
DETACHED = "detached"
STOPPED = "stopped"
QUIT = "quit"


class MonitorScreen(LoratopScreen[str]):
    """One run, live: header, loss chart, panels, log pane, outcome."""

    BINDINGS = [
        Binding("s", "stop", "stop", tooltip="stop training gracefully (asks first; the adapter is saved)"),
        Binding("c", "checkpoint", "ckpt", tooltip="save a checkpoint now (at the next step boundary)"),
        Binding(
            "d", "detach", "detach", tooltip="detach: leave the run going and quit (loratop attach brings it back)"
        ),
        Binding("escape", "back", "back", tooltip="back to the run history, which lists this run live (it goes on)"),
        Binding("q", "quit_run", "quit", tooltip="quit loratop (while the run trains it asks: stop it, or detach)"),
        Binding("l", "log_scale", "log-y", tooltip="loss chart: log scale on/off"),
        Binding("left_square_bracket", "chart_cursor(-1)", "cursor ◀", tooltip=CURSOR_BACK, group=CURSOR_KEYS),
        Binding("right_square_bracket", "chart_cursor(1)", "cursor ▶", tooltip=CURSOR_ON, group=CURSOR_KEYS),
        Binding("z", "chart_zoom", "zoom", tooltip=ZOOM_IN, group=ZOOM_KEYS),
        Binding("0,Z", "chart_reset", "whole", tooltip="loss chart: the whole run again, no cursor", group=ZOOM_KEYS),
        Binding("g", "toggle_log", "log", tooltip="show/hide the trainer's log (on a short terminal, over lr/params)"),
        Binding("e", "edit", "rerun", tooltip="rerun with changes: the knob editor on this run's config"),
        Binding("n", "next_run", "next", tooltip="next run: the editor with the changes this finished run calls for"),
        Binding("x", "export", "export", tooltip="export: metrics CSV, events JSONL and this screen as SVG"),
        Binding("question_mark", "app.help", "help", tooltip="this help: every key and what it does"),
    ]
    """The footer shows each description; the help screen and the command palette its tooltip.

    ``q`` quits loratop wherever the monitor is, and asks first while the run trains: stop it, or
    detach. ``esc`` goes back to the run history (the run goes on, listed live there): where the
    monitor was opened from it, or launched from the knob editor (the new run's monitor takes the
    editor's place, over the history); opened first (``loratop run``, ``loratop attach``) there is
    nothing to go back to, and :meth:`check_action` hides it."""

    def __init__(self, run_dir: Path, clock: Any = time.time) -> None:
        """Show ``run_dir``, as the App's watcher reads it (started on mount): through the pipe
        of a trainer this dashboard launched (:meth:`LoratopApp.open_monitor`), else by
        following its file. The screen holds neither pipe nor process."""
        super().__init__()
        self.run_dir = run_dir
        self.state = RunState(run_dir)
        self._clock = clock
        self._drawn_version = -1
        self._drawn_at = -1e9
        self._sparks_at = -1e9
        self._texts: dict[str, str] = {}
        self._log_offset = 0
        self._log_partial = ""
        """The log's last line, until its newline comes (or the log stops growing)."""
        self._log_lines: deque[Text] = deque(maxlen=LOG_LINES)
        """The log pane's lines, kept while it is hidden and drawn again at its width when shown."""
        self._log_reader = LogReader()
        self._smoothed: RunningEma | None = None
        self._garbage_base = 0

    def compose(self) -> ComposeResult:
        # markup=False: every text here is the run's (its name, errors, log lines), never markup.
        yield Static(id="run-header", markup=False)
        with Container(id="body"):
            yield LossChart(id="loss-chart")
            with Container(id="side"):
                with Vertical(classes="panel", id="lr-panel"):
                    with Horizontal(classes="spark-row"):
                        yield Static(id="lr-text", markup=False)
                        yield Sparkline([], id="lr-spark")
                    with Horizontal(classes="spark-row"):
                        yield Static(id="grad-text", markup=False)
                        yield Sparkline([], id="grad-spark")
                yield Static(classes="panel", id="params", markup=False)
                with Vertical(classes="panel", id="memory-panel"):
                    yield MemoryPanel(id="memory")
                    yield Sparkline([], id="mem-spark")
                yield Static(classes="panel", id="events-panel", markup=False)
        yield Static(id="outcome", markup=False)
        # Imported here: RichLog brings rich.pretty and attrs (~30 ms), which the home screen never needs.
        from textual.widgets import RichLog

        yield RichLog(id="trainer-log", max_lines=LOG_LINES, wrap=True, min_width=20)
        yield Static(id="status-line", markup=False)
        yield KeyFooter(wide_only={"next_run"})  # n works at any width; an 80-column footer has no room for it

    @staticmethod
    def hidden_actions(has_screen_below: bool) -> frozenset[str]:
        """The action a monitor hides (key, footer, help): ``back`` where there is no run history to go back to."""
        return frozenset() if has_screen_below else frozenset({"back"})

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """``esc`` goes back where there is a screen to go back to; ``q`` quits everywhere."""
        return action not in self.hidden_actions(self.has_screen_below)

    def on_mount(self) -> None:
        self._apply_layout(self.app.size.width, self.app.size.height)
        self.loratop.watch_run(self, self.run_dir)  # the App's watcher reads the run and posts here
        self.set_interval(1 / REFRESH_HZ, self.refresh_view)
        self.set_interval(0.5, self._tail_trainer_log)
        self.refresh_view()

    def on_unmount(self) -> None:
        """The screen goes (back to the history, or the App exits): its watcher stops. A trainer
        this dashboard launched trains on, and is reaped when it exits (never signalled)."""
        self.loratop.stop_watching(self)

    def on_resize(self, event: Any) -> None:
        self._apply_layout(event.size.width, event.size.height)
        if self.has_class("-log-shown"):
            self.call_after_refresh(self._redraw_log)  # wrapped again at the pane's new width

    def _apply_layout(self, width: int, height: int) -> None:
        self.set_class(width < NARROW, "narrow")
        self.set_class(height < SHORT, "short")

    @on(Replayed)
    def _replayed(self, message: Replayed) -> None:
        self.state = message.state
        self._garbage_base = message.state.garbage  # the follower counts from here on
        self._smoothed = None  # the loss line is smoothed again from the whole series
        self._drawn_version = -1
        self._sparks_at = -1e9  # the history the replay brought is drawn at once, sparklines too

    @on(EventsArrived)
    def _events_arrived(self, message: EventsArrived) -> None:
        self.state.apply_all(message.events)
        self.state.garbage = self._garbage_base + message.garbage
        self.state.filled_from_file = max(self.state.filled_from_file, message.filled_from_file)
        self.state.version += 1

    @on(TrainerGone)
    def _trainer_gone(self, message: TrainerGone) -> None:
        """The watcher proved the trainer gone without a report (and recorded it in status.json)."""
        if self.state.finished is None and not self.state.trainer_gone:
            self.state.mark_lost(message.cause)

    @on(FolderRemoved)
    def _folder_removed(self, message: FolderRemoved) -> None:
        self.state.folder_note = message.note
        self.state.version += 1

    @on(WatchFailed)
    def _watch_failed(self, message: WatchFailed) -> None:
        """The watcher failed (a run's files no reader check foresaw): say so on screen,
        instead of a header that reads STARTING forever."""
        if not self.state.trainer_gone:
            error = message.error
            self.state.not_proven = f"cannot read this run's events: {type(error).__name__}: {error}"
            self.state.version += 1

    @on(TrainerPaused)
    def _trainer_paused(self, message: TrainerPaused) -> None:
        self.state.paused = message.why
        self.state.version += 1

    @on(TrainerNotProven)
    def _trainer_not_proven(self, message: TrainerNotProven) -> None:
        if not self.state.trainer_gone:
            self.state.not_proven = message.why
            self.state.version += 1

    # -- drawing (timer) --------------------------------------------------------

    def refresh_view(self) -> None:
        """Push what changed to the widgets.

        While the run trains, the header and the data are redrawn at most every
        :data:`DATA_REFRESH_S`, the sparklines every :data:`SPARK_REFRESH_S`, and a text only
        when it changed: each redraw is bytes on the user's SSH link, and a step a second is
        all an eye follows. A finished run is drawn at once.
        """
        state = self.state
        now = time.monotonic()
        live = state.is_live
        if live and now - self._drawn_at < DATA_REFRESH_S:
            return
        header = self.query_one("#run-header", Static)
        first, second = panels.header_lines(state, self._clock(), header.content_size.width or None)
        evaluated = panels.eval_text(state)
        header.set_class(evaluated is not None, "-with-eval")
        third = f"\n{evaluated}" if evaluated else ""
        self._set_text("#run-header", Content.from_markup("[b]$first[/b]\n$rest", first=first, rest=second + third))
        if state.version == self._drawn_version:
            return
        self._drawn_version, self._drawn_at = state.version, now
        sparks = not live or now - self._sparks_at >= SPARK_REFRESH_S
        steps = state.steps
        if steps:
            spikes = [(float(s.get("step", 0)), float(s.get("loss") or 0)) for s in state.spikes]
            if self._smoothed is None:
                self._smoothed = RunningEma(smoothing_alpha(state.max_steps or 1000))
            smoothed = self._smoothed.extend(state.loss)
            x_range = (0.0, float(state.max_steps)) if state.max_steps and live else None
            evals = [(float(step), loss) for step, loss in state.eval_points()]
            self.query_one(LossChart).update(steps, state.loss, smoothed, spikes, x_range, evals, state.lr)
            if sparks:
                self.query_one("#lr-spark", Sparkline).data = panels.spark_history(state.lr)
                self.query_one("#grad-spark", Sparkline).data = panels.spark_history(state.grad_norm)
        elif state.finished is not None or state.trainer_gone:
            self.query_one(LossChart).show_ended()  # not "waiting": no step will come
        self._set_text("#lr-text", panels.lr_text(state))
        self._set_text("#grad-text", panels.grad_norm_text(state))
        self._set_text("#params", panels.params_text(state))
        ended = state.finished is not None or state.trainer_gone
        self.query_one(MemoryPanel).update(state.memory, state.ranks, ended=ended)
        if sparks:
            if steps:  # until the first step, drawn at every change: the first steps show at once
                self._sparks_at = now
            spark = self.query_one("#mem-spark", Sparkline)
            spark.data = list(state.mem_series[-240:])
            spark.tooltip = ("VRAM" if state.mem_series_kind == "gpu" else "host RSS") + " over the last 2 minutes"
        self._set_text("#events-panel", panels.events_text(state))
        self._set_text("#status-line", panels.status_line(state))
        outcome = panels.outcome_text(state)
        box = self.query_one("#outcome", Static)
        if outcome is not None:
            self._set_text("#outcome", outcome)
            kind = state.status if state.status in ev.FINISH_STATUSES else ev.LOST
            if state.status in (RUNNING, PAUSED):
                kind = ev.STOPPED  # a warning while it trains (starved, paused), not an ending
            box.set_classes(f"shown {kind}")
        elif box.has_class("shown"):
            box.set_classes("")  # what it said no longer holds (the trainer was continued)

    def _set_text(self, selector: str, text: str | Content) -> None:
        """Update a Static only when its text changes (an update redraws it, unchanged or not)."""
        plain = text.plain if isinstance(text, Content) else text
        if self._texts.get(selector) != plain:
            self._texts[selector] = plain
            self.query_one(selector, Static).update(text)

    @work(thread=True, exclusive=True, group="log-tail", exit_on_error=False)
    def _tail_trainer_log(self) -> None:
        """The timer: read what the trainer's log gained, off the UI thread (a slow disk or a
        network folder never stalls a redraw), then add it to the pane (:meth:`_add_trainer_log`)."""
        path = self.run_dir / LOG
        chunk = b""
        offset = self._log_offset
        try:
            size = path.stat().st_size
            if offset == 0 and size > 65536:
                offset = size - 65536  # open on the tail of a long log
            if size > offset:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read(1 << 20)
        except OSError:
            pass  # gone or unreadable now: what was read stays, and a line held back is let go below
        if get_current_worker().is_cancelled:
            return
        self.app.call_from_thread(self._add_trainer_log, offset, chunk)

    def _add_trainer_log(self, offset: int, chunk: bytes) -> None:
        """On the UI thread: the bytes read from ``offset`` become the pane's lines."""
        if offset < self._log_offset or not self.is_mounted:
            return  # an older read, overtaken
        self._log_offset = offset + len(chunk)
        if not chunk:  # the log stopped growing: its last line, newline or not, is whole for now
            lines, self._log_partial = ([self._log_partial] if self._log_partial else []), ""
        else:
            text = self._log_partial + chunk.decode(errors="replace").replace("\r\n", "\n")
            *lines, self._log_partial = text.split("\n")
        if not lines:
            return
        shown = self.has_class("-log-shown")
        log_widget = self.query_one("#trainer-log", _rich_log())
        for line in lines:
            # tqdm-style progress bars redraw with \r; show their latest state only.
            shown_line = self._log_text(self._log_reader.read(line.rsplit("\r", 1)[-1]))
            self._log_lines.append(shown_line)
            if shown:
                log_widget.write(shown_line)

    @staticmethod
    def _log_text(line: LogLine) -> Text:
        """One log line as the pane shows it: wrapped, so all of it reads at 80 columns; a known
        harmless warning after a note that says why; the Trainer's per-step metric printout on
        one row (the chart shows those figures; ``trainer.log`` has them whole). Literal text."""
        plain = _CONTROL.sub("�", line.text.expandtabs())
        if line.kind == METRICS:
            return Text(plain, style="dim", no_wrap=True, overflow="ellipsis")
        if line.kind == KNOWN:
            return Text.assemble((f"({line.note}) ", "green"), (plain, "dim"))
        if line.kind == SOURCE:
            return Text(plain, style="dim")
        return Text(plain)

    def _redraw_log(self) -> None:
        """Draw the pane's lines again, wrapped at its width (it was hidden, or resized)."""
        log_widget = self.query_one("#trainer-log", _rich_log())
        log_widget.clear()
        for text in self._log_lines:
            log_widget.write(text)

    # -- actions ----------------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> bool:
        """Signal this run's trainer, only once status.json proves the pid is still it."""
        status = read_status(self.run_dir) or {}
        requests = status.get("control") == "requests"  # a script's LoratopCallback: no signal, a file
        pid, not_it = (
            (proven_trainer_pid(status), why_not_proven(status)) if requests else signal_target(self.run_dir, status)
        )
        if pid is None or not self.state.is_live:
            ended = self.state.finished is not None or self.state.trainer_gone
            why = "the run has ended" if ended else not_it
            self.notify(f"not signalling: {why}", severity="warning", markup=False)
            return False
        if requests:
            try:
                request_control(self.run_dir, "stop" if sig != signal.SIGUSR1 else "checkpoint")
            except OSError as exc:
                self.notify(f"cannot ask the run: {exc.strerror or exc}", severity="error", markup=False)
                return False
            return True
        with contextlib.suppress(ProcessLookupError):  # it ended this instant
            os.kill(pid, sig)
        return True

    def action_stop(self) -> None:
        """Stop training gracefully at the next step boundary, after confirmation."""
        if not self.state.is_live:
            self.notify("the run has already ended", severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if yes and self._signal(signal.SIGTERM):
                self.notify("stopping at the next step boundary; the adapter will be saved")

        self.app.push_screen(ConfirmScreen("Stop training? The adapter is saved at the next step.", "Stop"), confirmed)

    def action_checkpoint(self) -> None:
        """Ask the trainer to save a checkpoint at the next step boundary."""
        if self._signal(signal.SIGUSR1):
            self.notify("checkpoint requested: saved at the next step boundary")

    def action_back(self) -> None:
        """Back to the run history, which lists this run live; the run goes on."""
        self.dismiss()

    def action_detach(self) -> None:
        """Leave the run going and quit the dashboard."""
        self._exit(DETACHED if self.state.is_live else QUIT)

    def action_quit_run(self) -> None:
        """Quit; while the run trains, ask whether to stop it or detach."""
        if not self.state.is_live:
            self._exit(QUIT)
            return

        def chosen(choice: str | None) -> None:
            if choice == "detach":
                self._exit(DETACHED)
            elif choice == "stop":
                self._signal(signal.SIGTERM)
                self._exit(STOPPED)

        self.app.push_screen(QuitScreen(), chosen)

    def _exit(self, how: str) -> None:
        """End the dashboard on this run (the CLI's "come back with" names it)."""
        self.loratop.ended_on = self.run_dir
        self.app.exit(how)

    def action_log_scale(self) -> None:
        """Toggle the loss chart's log scale."""
        chart = self.query_one(LossChart)
        chart.log_scale = not chart.log_scale

    def action_chart_cursor(self, by: int) -> None:
        """Move the loss chart's cursor ``by`` cells (the first press shows it on the latest step)."""
        self.query_one(LossChart).move_cursor(by)

    def action_chart_zoom(self) -> None:
        """Zoom the loss chart in, on its cursor (without one: on the latest steps)."""
        if not self.query_one(LossChart).zoom_in():
            self.notify("the loss chart cannot zoom in further (or has no step yet)", severity="warning")

    def action_chart_reset(self) -> None:
        """The loss chart's whole run again, without a cursor."""
        self.query_one(LossChart).reset_view()

    def action_toggle_log(self) -> None:
        """Show or hide the trainer's log pane (on a short terminal it takes the lr and params panels' place)."""
        self.toggle_class("-log-shown")
        if self.has_class("-log-shown"):
            self.call_after_refresh(self._redraw_log)

    def action_edit(self) -> None:
        """Rerun with changes: the knob editor on this run's config; the new run records this one as its parent."""
        self.loratop.open_editor(self.run_dir)

    def action_next_run(self) -> None:
        """The next run (``loratop next``): the knob editor with the changes this run's record calls for; a
        finished run's only (a live run's record is not complete)."""
        if self.state.is_live:
            self.notify("the run is still training: its next run is proposed once it ends", severity="warning")
            return
        self.loratop.open_next_run(self.run_dir, self.state)

    def action_export(self) -> None:
        """Write this run's metrics (CSV) and events (JSONL), and this screen (SVG), to loratop-exports/."""
        self.loratop.export_run(self.run_dir)


def _rich_log() -> type[RichLog]:
    """The log pane's widget class, imported on first use (see :meth:`MonitorScreen.compose`)."""
    from textual.widgets import RichLog

    return RichLog
