"""The loratop dashboard (Textual).

One worker thread per monitor reads events (the trainer's pipe, or ``events.jsonl``
followed live) and posts them as messages; handlers fold them into a plain
:class:`RunState`; a 4 Hz timer pushes what changed to the widgets. The data rate
never sets the redraw rate.
"""

from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Log, Sparkline, Static
from textual.worker import get_current_worker

from trainer.run_dir import EVENTS, LOG, pid_alive, read_status, trainer_alive
from tui import panels
from tui.compare_screen import CompareScreen
from tui.event_stream import FileFollower, PipeStream
from tui.messages import EventsArrived, TrainerGone
from tui.run_state import RunState
from tui.runs import DEFAULT_ROOT, SORT_KEYS, list_runs, sort_runs
from widgets import LossChart, MemoryPanel
from widgets.downsample import RunningEma, smoothing_alpha

if TYPE_CHECKING:
    from trainer.config import RunConfig

EXPORT_DIR = Path("loratop-exports")
"""Where the dashboard's exports go (metrics CSV, events JSONL, screen SVG), under the current folder."""
NARROW = 100
"""Below this many columns the side panels stack under the chart."""
REFRESH_HZ = 4


# How a dashboard session ended, returned by App.run().
DETACHED = "detached"
STOPPED = "stopped"
QUIT = "quit"


class ConfirmScreen(ModalScreen[bool]):
    """Yes / no."""

    BINDINGS = [Binding("escape", "dismiss(False)", "cancel"), Binding("y", "dismiss(True)", "yes")]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self._question, self._yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self._question)
            with Horizontal():
                yield Button(self._yes, variant="error", id="yes")
                yield Button("Cancel", id="no")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


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
                yield Button("Stop training [s]", variant="error", id="stop")
                yield Button("Detach [d]", variant="primary", id="detach")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)


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


class MonitorScreen(Screen[str]):
    """One run, live: header, loss chart, panels, log pane, outcome."""

    BINDINGS = [
        Binding("s", "stop", "stop"),
        Binding("c", "checkpoint", "ckpt"),
        Binding("d", "detach", "detach"),
        Binding("q", "quit_run", "quit"),
        Binding("l", "log_scale", "log y"),
        Binding("g", "toggle_log", "log pane"),
        Binding("e", "edit", "rerun w/ changes"),
        Binding("x", "export", "export"),
        Binding("question_mark", "help", "help"),
    ]

    def __init__(self, run_dir: Path, pipe_fd: int | None = None, clock: Any = time.time) -> None:
        """Watch ``run_dir``: through ``pipe_fd`` when we launched it, else by following its file."""
        super().__init__()
        self.run_dir = run_dir
        self.state = RunState(run_dir)
        self._pipe_fd = pipe_fd
        self._clock = clock
        self._drawn_version = -1
        self._log_offset = 0
        self._smoothed: RunningEma | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="run-header")
        with Container(id="body"):
            yield LossChart(id="loss-chart")
            with Container(id="side"):
                with Vertical(classes="panel", id="lr-panel"):
                    yield Static(id="lr-text")
                    yield Sparkline([], id="lr-spark")
                yield Static(classes="panel", id="params")
                with Vertical(classes="panel", id="memory-panel"):
                    yield MemoryPanel(id="memory")
                    yield Sparkline([], id="mem-spark")
                yield Static(classes="panel", id="events-panel")
        yield Static(id="outcome")
        yield Log(id="trainer-log", max_lines=2000)
        yield Static(id="status-line")
        yield Footer()

    def on_mount(self) -> None:
        self._apply_layout(self.app.size.width)
        self.read_events()
        self.set_interval(1 / REFRESH_HZ, self.refresh_view)
        self.set_interval(0.5, self._tail_trainer_log)
        self.refresh_view()

    def on_resize(self, event: Any) -> None:
        self._apply_layout(event.size.width)

    def _apply_layout(self, width: int) -> None:
        self.set_class(width < NARROW, "narrow")

    # -- reading events (worker thread) ---------------------------------------

    @work(thread=True, exclusive=True, group="events", exit_on_error=False)
    def read_events(self) -> None:
        """Read the pipe (then the file's rest), or follow the file; post batches."""
        worker = get_current_worker()
        path = self.run_dir / EVENTS
        if self._pipe_fd is not None:
            stream = PipeStream(self._pipe_fd, path)
            try:
                while not worker.is_cancelled:
                    ready, _, _ = select.select([self._pipe_fd], [], [], 0.25)
                    if not ready:
                        continue
                    batch = stream.read()
                    if batch is None:
                        break
                    if batch:
                        self.post_message(EventsArrived(batch, stream.skipped, stream.filled_from_file))
                rest = stream.rest_from_file()
                self.post_message(EventsArrived(rest, stream.skipped, stream.filled_from_file))
            finally:
                os.close(self._pipe_fd)
                self._pipe_fd = None
            skip_to = stream.next_seq
        else:
            skip_to = 0
        self._follow_file(path, skip_to, worker)

    def _follow_file(self, path: Path, skip_to: int, worker: Any) -> None:
        follower = FileFollower(path)
        finished = False
        last_alive_check = 0.0
        while not worker.is_cancelled:
            batch = [e for e in follower.poll() if e["seq"] >= skip_to]
            if batch:
                finished = finished or any(e["type"] == "run_finished" for e in batch)
                self.post_message(EventsArrived(batch, follower.skipped, 0))
            if finished:
                return
            now = time.monotonic()
            if now - last_alive_check > 1.0:
                last_alive_check = now
                if not self._trainer_alive():
                    final = [e for e in follower.poll() if e["seq"] >= skip_to]
                    if final:
                        self.post_message(EventsArrived(final, follower.skipped, 0))
                    if not any(e["type"] == "run_finished" for e in final):
                        self.post_message(TrainerGone())
                    return
            time.sleep(0.2)

    def _trainer_alive(self) -> bool:
        return trainer_alive(read_status(self.run_dir) or {})

    @on(EventsArrived)
    def _events_arrived(self, message: EventsArrived) -> None:
        self.state.apply_all(message.events)
        self.state.garbage = message.garbage
        self.state.filled_from_file = max(self.state.filled_from_file, message.filled_from_file)
        self.state.version += 1

    @on(TrainerGone)
    def _trainer_gone(self, message: TrainerGone) -> None:
        self.state.trainer_gone = True
        self.state.version += 1

    # -- drawing (timer) --------------------------------------------------------

    def refresh_view(self) -> None:
        """Push what changed to the widgets (the header's clock ticks regardless)."""
        state = self.state
        first, second = panels.header_lines(state, self._clock())
        self.query_one("#run-header", Static).update(f"[b]{first}[/b]\n{second}")
        if state.version == self._drawn_version:
            return
        self._drawn_version = state.version
        steps = state.steps
        if steps:
            spikes = [(float(s.get("step", 0)), float(s.get("loss") or 0)) for s in state.spikes]
            if self._smoothed is None:
                self._smoothed = RunningEma(smoothing_alpha(state.max_steps or 1000))
            smoothed = self._smoothed.extend(state.loss)
            self.query_one(LossChart).update(steps, state.loss, smoothed, spikes)
            self.query_one("#lr-spark", Sparkline).data = list(state.lr[-200:])
        self.query_one("#lr-text", Static).update(panels.lr_text(state))
        self.query_one("#params", Static).update(panels.params_text(state))
        self.query_one(MemoryPanel).update(state.memory)
        spark = self.query_one("#mem-spark", Sparkline)
        spark.data = list(state.mem_series[-240:])
        spark.tooltip = ("VRAM" if state.mem_series_kind == "gpu" else "host RSS") + " over the last 2 minutes"
        self.query_one("#events-panel", Static).update(panels.events_text(state))
        self.query_one("#status-line", Static).update(panels.status_line(state))
        outcome = panels.outcome_text(state)
        box = self.query_one("#outcome", Static)
        if outcome is not None:
            box.update(outcome)
            kind = state.status if state.status in ("completed", "stopped", "failed", "oom") else "lost"
            box.set_classes(f"shown {kind}")

    def _tail_trainer_log(self) -> None:
        log_widget = self.query_one("#trainer-log", Log)
        path = self.run_dir / LOG
        try:
            size = path.stat().st_size
            if self._log_offset == 0 and size > 65536:
                self._log_offset = size - 65536  # open on the tail of a long log
            if size <= self._log_offset:
                return
            with path.open("rb") as fh:
                fh.seek(self._log_offset)
                chunk = fh.read(1 << 20)
        except OSError:
            return
        self._log_offset += len(chunk)
        # tqdm-style progress bars redraw with \r; show their latest state only.
        text = chunk.decode(errors="replace").replace("\r\n", "\n")
        lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
        log_widget.write_lines(lines[:-1] if text.endswith("\n") else lines)

    # -- actions ----------------------------------------------------------------

    def _pid(self) -> int | None:
        pid = (read_status(self.run_dir) or {}).get("pid")
        return pid if isinstance(pid, int) and pid_alive(pid) else None

    def _signal(self, sig: signal.Signals) -> bool:
        pid = self._pid()
        if pid is None or not self.state.is_live:
            self.notify("the trainer is not running", severity="warning")
            return False
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

    def action_detach(self) -> None:
        """Leave the run going and quit the dashboard."""
        self.app.exit(DETACHED if self.state.is_live else QUIT)

    def action_quit_run(self) -> None:
        """Quit; while the run trains, ask whether to stop it or detach."""
        if not self.state.is_live:
            self.app.exit(QUIT)
            return

        def chosen(choice: str | None) -> None:
            if choice == "detach":
                self.app.exit(DETACHED)
            elif choice == "stop":
                self._signal(signal.SIGTERM)
                self.app.exit(STOPPED)

        self.app.push_screen(QuitScreen(), chosen)

    def action_log_scale(self) -> None:
        """Toggle the loss chart's log scale."""
        chart = self.query_one(LossChart)
        chart.log_scale = not chart.log_scale

    def action_toggle_log(self) -> None:
        """Show or hide the trainer's log pane."""
        self.query_one("#trainer-log", Log).toggle_class("shown")

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())

    def action_edit(self) -> None:
        """Rerun with changes: the knob editor on this run's config; the new run records this one as its parent."""
        self.app.open_editor(self.run_dir)  # type: ignore[attr-defined]

    def action_export(self) -> None:
        """Write this run's metrics (CSV) and events (JSONL), and this screen (SVG), to loratop-exports/."""
        self.app.export_run(self.run_dir)  # type: ignore[attr-defined]


class HomeScreen(Screen[None]):
    """Run history: every run under the runs folder with its key knobs and outcome; sortable.

    Open one, edit one (rerun with changes), mark several and compare them, or start
    from a sample config.
    """

    BINDINGS = [
        Binding("enter", "open", "open"),
        Binding("e", "edit", "edit/rerun"),
        Binding("space", "mark", "mark"),
        Binding("c", "compare", "compare"),
        Binding("o", "sort", "sort"),
        Binding("n", "new", "new"),
        Binding("x", "export", "export"),
        Binding("r", "reload", "refresh"),
        Binding("q", "app.quit", "quit"),
    ]

    SORT_BY_COLUMN = {
        "run": "name",
        "status": "status",
        "final loss": "loss",
        "peak VRAM": "vram",
        "spikes": "spikes",
        "time": "duration",
    }
    """The sort a click on a column's title applies (the other columns do not sort)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.sort_key = "started"
        self.marked: list[Path] = []
        """Runs marked for comparison (space), in the order they were marked."""
        self._parents: dict[Path, str | None] = {}
        """Each listed run's recorded parent, from the last reload."""

    def compose(self) -> ComposeResult:
        yield Static(f"[b]loratop[/b] · runs in {self.root}/", id="run-header")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="home-hint")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for title in panels.HISTORY_COLUMNS:
            table.add_column(title, key=title)
        self.action_reload()

    def on_screen_resume(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        runs = sort_runs(list_runs(self.root), self.sort_key)
        self._parents = {run.run_dir: run.parent for run in runs}
        for run in runs:
            name, *cells = panels.history_row(run)
            mark = "● " if run.run_dir in self.marked else ""
            table.add_row(mark + name, *cells, key=str(run.run_dir))
        if runs:
            table.move_cursor(row=min(cursor, len(runs) - 1))
        hint = self.query_one("#home-hint", Static)
        if not runs:
            hint.update(f"no runs under {self.root}/ yet · n starts one from a sample config")
        else:
            marked = f" · {len(self.marked)} marked" if self.marked else ""
            hint.update(
                f"sorted by {self.sort_key}{marked} · enter opens · e edits/reruns · space marks · "
                "c compares (marked, or a run with its parent)"
            )

    def selected(self) -> Path | None:
        """The run under the cursor."""
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return Path(key) if key else None

    def action_open(self) -> None:
        run_dir = self.selected()
        if run_dir is not None:
            self.app.push_screen(MonitorScreen(run_dir))

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.app.push_screen(MonitorScreen(Path(event.row_key.value)))

    @on(DataTable.HeaderSelected)
    def _header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = self.SORT_BY_COLUMN.get(str(event.column_key.value))
        if key:
            self.sort_key = key
            self.action_reload()

    def action_sort(self) -> None:
        """Cycle the sort: newest first, name, status, final loss, peak VRAM, duration, spikes."""
        keys = list(SORT_KEYS)
        self.sort_key = keys[(keys.index(self.sort_key) + 1) % len(keys)] if self.sort_key in keys else keys[0]
        self.action_reload()

    def action_mark(self) -> None:
        """Mark or unmark the run under the cursor for comparison."""
        run_dir = self.selected()
        if run_dir is None:
            return
        if run_dir in self.marked:
            self.marked.remove(run_dir)
        else:
            self.marked.append(run_dir)
        self.action_reload()

    def action_compare(self) -> None:
        """Compare the marked runs; one marked: it and the run under the cursor; none: that run and its parent."""
        from tui.runs import resolve_parent

        runs = list(self.marked)
        current = self.selected()
        if len(runs) == 1 and current is not None and current != runs[0]:
            runs.append(current)
        elif len(runs) < 2:
            parent = resolve_parent(current, self._parents.get(current)) if current else None
            if current is None or parent is None:
                self.notify("mark two or more runs with space first (this run has no parent run)", severity="warning")
                return
            runs = [parent, current]
        self.app.push_screen(CompareScreen(runs))

    def action_edit(self) -> None:
        run_dir = self.selected()
        if run_dir is not None:
            self.app.open_editor(run_dir)  # type: ignore[attr-defined]

    def action_export(self) -> None:
        run_dir = self.selected()
        if run_dir is not None:
            self.app.export_run(run_dir, screen=False)  # type: ignore[attr-defined]

    def action_new(self) -> None:
        from tui.sample_picker import SamplePicker

        def picked(config: Path | None) -> None:
            if config is not None:
                self.app.open_editor(config)  # type: ignore[attr-defined]

        self.app.push_screen(SamplePicker(), picked)


class LoratopApp(App[str]):
    """The dashboard: the run history (home), one run's monitor, the knob editor or the compare screen."""

    CSS_PATH = "app.tcss"
    TITLE = "loratop"
    ENABLE_COMMAND_PALETTE = True

    def __init__(
        self,
        run_dir: Path | None = None,
        pipe_fd: int | None = None,
        runs_root: Path = DEFAULT_ROOT,
        notice: str | None = None,
        *,
        compare: list[Path] | None = None,
        compare_x: str = "steps",
        edit: Path | None = None,
    ) -> None:
        """Open the monitor of ``run_dir`` (via ``pipe_fd`` when we launched it), or another first screen.

        Args:
            run_dir: A run to watch.
            pipe_fd: The read end of its events pipe, when this process launched it.
            runs_root: Where runs live (the home screen's history; the editor's new runs).
            notice: Shown as a toast on opening (e.g. the pre-flight memory estimate).
            compare: Open the compare screen on these runs instead.
            compare_x: The compare chart's x axis: ``steps`` or ``tokens``.
            edit: Open the knob editor on this config file or run folder instead.
        """
        super().__init__()
        self._run_dir = run_dir
        self._pipe_fd = pipe_fd
        self.runs_root = runs_root
        self._notice = notice
        self._compare = compare
        self._compare_x = compare_x
        self._edit = edit

    def on_mount(self) -> None:
        if self._run_dir is not None:
            self.push_screen(MonitorScreen(self._run_dir, self._pipe_fd))
        elif self._compare:
            self.push_screen(CompareScreen(self._compare, self._compare_x))
        elif self._edit is not None:
            self.push_screen(HomeScreen(self.runs_root))
            self.open_editor(self._edit)
        else:
            self.push_screen(HomeScreen(self.runs_root))
        if self._notice:
            self.notify(self._notice, timeout=10)

    def open_editor(self, target: Path) -> None:
        """The knob editor on a config file or a run folder (then its config.yaml: rerun with changes)."""
        from trainer.config import ConfigError
        from tui.knob_editor import editor_for_config, editor_for_run

        try:
            if target.is_dir():
                editor = editor_for_run(target, self.runs_root)
            else:
                editor = editor_for_config(target, self.runs_root)
        except ConfigError as exc:
            self.notify("\n".join(exc.problems), title="cannot edit", severity="error", timeout=10)
            return
        self.push_screen(editor)

    def launch_config(self, config: RunConfig, source: Path | None, replace: Screen[Any] | None = None) -> Path:
        """Launch a checked config and watch it; ``replace`` (the editor) gives way to the new monitor."""
        from tui.launcher import launch

        run = launch(config, source)
        monitor = MonitorScreen(run.run_dir, run.events_fd)
        if replace is not None and self.screen is replace:
            self.switch_screen(monitor)
        else:
            self.push_screen(monitor)
        self.notify(
            f"launched {run.run_dir.name}" + (f" (parent: {Path(config.parent).name})" if config.parent else "")
        )
        return run.run_dir

    def export_run(self, run_dir: Path, screen: bool = True) -> list[Path]:
        """Write a run's metrics CSV and events JSONL (and this screen's SVG) to ``loratop-exports/``."""
        from tui.export import export_run

        try:
            written = export_run(run_dir, EXPORT_DIR)
            if screen:
                written.append(Path(self.save_screenshot(filename=f"{run_dir.name}.svg", path=str(EXPORT_DIR))))
        except OSError as exc:
            self.notify(f"export failed: {exc}", severity="error")
            return []
        self.notify("exported " + ", ".join(str(p) for p in written), timeout=8)
        return written

    def action_export_screen(self) -> None:
        """Save the current screen as SVG in ``loratop-exports/``."""
        try:
            path = self.save_screenshot(path=str(EXPORT_DIR))
        except OSError as exc:
            self.notify(f"export failed: {exc}", severity="error")
            return
        self.notify(f"saved {path}")

    def get_system_commands(self, screen: Screen[Any]) -> Any:
        """Every key's action is also in the command palette (ctrl+p)."""
        yield from super().get_system_commands(screen)
        yield SystemCommand("Save screen as SVG", "into loratop-exports/", self.action_export_screen)
        if isinstance(screen, MonitorScreen):
            for title, help_text, action in (
                ("Stop training", "stop gracefully at the next step and save the adapter", screen.action_stop),
                ("Save checkpoint now", "SIGUSR1 to the trainer", screen.action_checkpoint),
                ("Detach", "leave the run going and quit", screen.action_detach),
                ("Quit", "asks stop or detach while training", screen.action_quit_run),
                ("Toggle log scale", "loss chart y axis", screen.action_log_scale),
                ("Toggle trainer log", "show or hide trainer.log", screen.action_toggle_log),
                ("Rerun with changes", "the knob editor on this run's config", screen.action_edit),
                ("Export run", "metrics CSV, events JSONL, screen SVG", screen.action_export),
                ("Help", "keys and what they do", screen.action_help),
            ):
                yield SystemCommand(title, help_text, action)
        if isinstance(screen, HomeScreen):
            for title, help_text, action in (
                ("Edit / rerun with changes", "the knob editor on the selected run", screen.action_edit),
                ("Compare", "marked runs, or the selected run with its parent", screen.action_compare),
                ("Change sort", "cycle the history's sort order", screen.action_sort),
                ("New run from a sample", "pick a sample config, then edit it", screen.action_new),
            ):
                yield SystemCommand(title, help_text, action)
