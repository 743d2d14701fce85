"""Run history: every run under the runs folder with its key knobs and outcome."""

from __future__ import annotations

import threading
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.events import Resize
from textual.widgets import DataTable, Static
from textual.worker import Worker, WorkerState, get_current_worker

from loratop.core.archive import CannotArchive, RunIsLive, archive_dir, archive_run, delete_run, why_live
from loratop.core.runs import CONFIG_SUFFIXES, SORT_KEYS, RunCatalog, RunSummary, sort_runs
from loratop.tui.models.run_table import FittedTable, fit_history, history_cells
from loratop.tui.screens.compare_screen import CompareScreen
from loratop.tui.screens.confirm_screen import ConfirmScreen
from loratop.tui.screens.loratop_screen import LoratopScreen
from loratop.tui.screens.monitor_screen import MonitorScreen
from loratop.widgets import KeyFooter

LIVE_REFRESH_S = 2.0
"""How often the home screen brings its list up to date (running runs, new and removed ones)."""

HOME_COLUMNS = (
    "run", "status", "step", "final loss", "eval (best)", "knobs", "peak VRAM", "GPU busy", "spikes", "spills", "time",
    "parent",
)  # fmt: skip
"""The home screen's columns, in order: what a user looks for first (name, status, step, loss)
on the left. Those that do not fit the screen are left out, most useful kept
(:data:`~tui.models.run_table.KEPT_FIRST`), and the hint under the table names them. ``loratop ls``
keeps :data:`~tui.models.panels.HISTORY_COLUMNS`' order."""

REMOVE = Binding.Group("archive/delete")
"""``a`` and ``d``: one entry of the footer where it has room (the help lists both)."""


class HomeScreen(LoratopScreen[None]):
    """Run history: every run under the runs folder with its key knobs and outcome; sortable.

    Open one, edit one (rerun with changes), mark several and compare them, start from a
    sample config, or archive or delete one that no trainer runs.
    """

    BINDINGS = [
        Binding("enter", "open", "open", tooltip="open the run under the cursor"),
        Binding("e", "edit", "rerun", tooltip="edit it: rerun with changes in the knob editor"),
        Binding("space", "mark", "mark", tooltip="mark runs to compare"),
        Binding("c", "compare", "compare", tooltip="compare the marked runs (or a run with its parent)"),
        Binding("o", "sort", "sort", tooltip="change the sort"),
        Binding("n", "new", "new", tooltip="start a run from a sample config"),
        Binding("x", "export", "export", tooltip="export the run's metrics CSV and events JSONL"),
        Binding("r", "reload", "refresh", tooltip="refresh the list now (it refreshes itself every 2 s)"),
        Binding(
            "a",
            "archive",
            "archive",
            tooltip="archive the run: move it to archive/ beside the runs (mv undoes it)",
            group=REMOVE,
        ),
        Binding("d", "delete", "delete", tooltip="delete the run's folder for good (asks first)", group=REMOVE),
        Binding("q", "app.quit", "quit", tooltip="quit (runs go on training: each in its own session)"),
        Binding("question_mark", "app.help", "help", tooltip="this help: every key and what it does"),
    ]
    """The footer shows each description; the help screen and the command palette its tooltip."""

    SORT_BY_COLUMN = {
        "run": "name",
        "status": "status",
        "final loss": "loss",
        "eval (best)": "eval",
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
        self._runs: dict[Path, RunSummary] = {}
        """Each listed run's summary, from the last look."""
        self._catalog = RunCatalog(root)
        self._catalog_lock = threading.Lock()
        """The catalog is looked at by one worker at a time (a look cancelled for a newer one may still run)."""
        self._read: list[RunSummary] | None = None
        """The runs as the last look read them; ``None`` until the first look is done."""
        self._shown: list[tuple[str, tuple[str, ...]]] = []
        """The table's rows as drawn: (run folder, cells)."""
        self._layout: tuple[tuple[str, str, int], ...] = ()
        """The table's columns as drawn: (column, title, width)."""
        self._width: int | None = None
        """The screen width the table was laid out for."""
        self._hint_text = ""

    def compose(self) -> ComposeResult:
        yield Static(Content.from_markup("[b]loratop[/b] · runs in $root/", root=str(self.root)), id="run-header")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="home-hint", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        self._hint([], None)  # "reading runs…" until the first look is done
        self._look()
        self.set_interval(LIVE_REFRESH_S, self._refresh_live)

    def on_resize(self, event: Resize) -> None:
        """A new width: the columns are chosen again, for the runs already read."""
        if self._width != event.size.width:
            self._redraw()

    def on_screen_resume(self) -> None:
        """Back from a run's monitor, the editor or compare: the list as it is now (a fresh look;
        the rows shown stay until it is done). The first time, the first look is under way."""
        if self._read is not None:
            self._look()

    def action_reload(self) -> None:
        """List the runs again: a fresh look at every run, on the worker (the rows shown stay until it is done)."""
        self._look()

    def _refresh_live(self) -> None:
        """The timer: bring the list up to date; only cells that changed are redrawn. Skipped while
        a look is under way (the first look at hundreds of runs may take longer than the timer)."""
        if self.is_current and not self._looking():
            self._look()

    def _looking(self) -> bool:
        return any(w.group == "home-look" and w.node is self and w.is_running for w in self.workers)

    @work(thread=True, exclusive=True, group="home-look", exit_on_error=False)
    def _look(self) -> None:
        """Look at every run's files (a stat each, a fold of what a running run appended), off the
        UI thread: the first look, a reload or the live refresh never stalls the screen."""
        with self._catalog_lock:
            runs = self._catalog.runs()
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._looked, runs)

    def _looked(self, runs: list[RunSummary]) -> None:
        """On the UI thread: a look is done; the table shows its runs (only changed cells redrawn)."""
        if not self.is_mounted:
            return
        self._read = runs
        if self.is_current:
            self._show(self._rows(), rebuild=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A look failed (a runs folder no check foresaw): said under the table, never a
        "reading runs…" that stays; the rows shown, if any, stay."""
        if event.worker.group == "home-look" and event.state == WorkerState.ERROR:
            error = event.worker.error
            self._hint_text = f"cannot read the runs under {self.root}/: {type(error).__name__}: {error}"
            self.query_one("#home-hint", Static).update(self._hint_text)

    def _redraw(self) -> None:
        """The runs already read, sorted, marked and fitted again (no disk read): a new sort, a
        mark, a new width."""
        if self._read is not None:
            self._show(self._rows(), rebuild=True)

    def _rows(self) -> list[tuple[str, dict[str, str]]]:
        """The runs read, in the sort's order, as the table's cells."""
        runs = sort_runs(self._read or [], self.sort_key)
        self._runs = {run.run_dir: run for run in runs}
        rows = []
        for run in runs:
            cells = history_cells(run)
            if run.run_dir in self.marked:
                cells["run"] = "● " + cells["run"]
            rows.append((str(run.run_dir), cells))
        return rows

    def _room(self, rows: int) -> int:
        """The columns the table can fill: its width, less a scrollbar's two when the rows overflow it."""
        table = self.query_one(DataTable)
        width = table.size.width or self.app.size.width
        height = table.size.height or self.app.size.height - 5
        return width - (2 if rows + 1 > height else 0)

    def _show(self, rows: list[tuple[str, dict[str, str]]], rebuild: bool) -> None:
        table = self.query_one(DataTable)
        self._width = self.size.width or self.app.size.width
        fitted = fit_history([cells for _, cells in rows], self._room(len(rows)), HOME_COLUMNS)
        # Widths too: a DataTable column never narrows by itself, so a column that must is laid out afresh.
        layout = tuple((column, fitted.titles[column], fitted.width(column)) for column in fitted.columns)
        shown = [
            (key, tuple(cells[column] for column in fitted.columns))
            for (key, _), cells in zip(rows, fitted.rows, strict=True)
        ]
        keys = [key for key, _ in shown]
        if not rebuild and layout == self._layout and keys == [key for key, _ in self._shown]:
            for (key, cells), (_, before) in zip(shown, self._shown, strict=True):
                for column, cell, old in zip(fitted.columns, cells, before, strict=True):
                    if cell != old:
                        table.update_cell(key, column, Text(cell), update_width=True)  # 99/100 → 100/100: never cut
            self._shown = shown
            self._hint(rows, fitted)
            return
        cursor = table.cursor_row
        table.clear(columns=layout != self._layout)
        if layout != self._layout:
            for column, title, _ in layout:
                table.add_column(Text(title), key=column)
            self._layout = layout
        for key, cells in shown:
            table.add_row(*map(Text, cells), key=key)  # a str cell would be read as markup: lora[r16]
        self._shown = shown
        if shown:
            table.move_cursor(row=min(cursor, len(shown) - 1))
        self._hint(rows, fitted)

    def _hint(self, rows: list[tuple[str, dict[str, str]]], fitted: FittedTable | None) -> None:
        """The lines under the table: the sort, what the narrowed table left out, the keys."""
        if self._read is None:
            text = f"reading runs under {self.root}/…"
        elif not rows or fitted is None:
            text = f"no runs under {self.root}/ yet · n starts one from a sample config"
        else:
            marked = f" · {len(self.marked)} marked" if self.marked else ""
            about = " · ".join([f"sorted by {self.sort_key}{marked}", *fitted.notes()])
            text = (
                f"{about}\nenter opens · e edits/reruns · space marks · c compares (marked, or a run with its "
                "parent) · a archives · d deletes"
            )
        if text != self._hint_text:  # the live refresh comes every 2 s: redrawn only when it says something new
            self._hint_text = text
            self.query_one("#home-hint", Static).update(text)

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
            self._redraw()

    def action_sort(self) -> None:
        """Cycle the sort: newest first, name, status, final loss, peak VRAM, duration, spikes."""
        keys = list(SORT_KEYS)
        self.sort_key = keys[(keys.index(self.sort_key) + 1) % len(keys)] if self.sort_key in keys else keys[0]
        self._redraw()

    def action_mark(self) -> None:
        """Mark or unmark the run under the cursor for comparison."""
        run_dir = self.selected()
        if run_dir is None:
            return
        if run_dir in self.marked:
            self.marked.remove(run_dir)
        else:
            self.marked.append(run_dir)
        self._redraw()

    def action_compare(self) -> None:
        """Compare the marked runs; one marked: it and the run under the cursor; none: that run and its parent."""
        from loratop.core.runs import resolve_parent

        runs = list(self.marked)
        current = self.selected()
        if len(runs) == 1 and current is not None and current != runs[0]:
            runs.append(current)
        elif len(runs) < 2:
            summary = self._runs.get(current) if current is not None else None
            parent = resolve_parent(summary.run_dir, summary.parent) if summary else None
            if summary is None or parent is None:
                why = no_parent_run(summary) if summary else "no run here"
                self.notify(
                    f"{why} · mark two or more runs with space to compare them",
                    severity="warning",
                    timeout=12,
                    markup=False,
                )
                return
            runs = [parent, summary.run_dir]
        self.app.push_screen(CompareScreen(runs))

    def action_edit(self) -> None:
        run_dir = self.selected()
        if run_dir is not None:
            self.loratop.open_editor(run_dir)

    def action_export(self) -> None:
        run_dir = self.selected()
        if run_dir is not None:
            self.loratop.export_run(run_dir, screen=False)

    def action_archive(self) -> None:
        """Move the run under the cursor into ``archive/`` beside the runs (never a live one)."""
        run_dir = self.selected()
        if run_dir is None:
            return
        try:
            archive_run(run_dir, self.root)
        except (RunIsLive, CannotArchive, OSError) as exc:
            self.notify(f"not archived: {exc}", severity="warning", timeout=12, markup=False)
            return
        self._removed(run_dir)
        self.notify(
            f"archived {run_dir.name} into {archive_dir(self.root)}/ (mv it back into {self.root}/ to list it again)",
            timeout=10,
            markup=False,
        )

    def action_delete(self) -> None:
        """Delete the run under the cursor, folder and all, once the user says yes (never a live one)."""
        run_dir = self.selected()
        if run_dir is None:
            return
        live = why_live(run_dir)
        if live is not None:
            self.notify(
                f"not deleted: {live} (s in its monitor stops it)", severity="warning", timeout=12, markup=False
            )
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._delete(run_dir)

        question = (
            f"Delete {run_dir.name} for good? Its folder goes, and every file in it: the events, the "
            "checkpoints, the adapter. (a archives it instead: out of the list, and back with a mv.)"
        )
        self.app.push_screen(ConfirmScreen(question, "Delete"), confirmed)

    @work(thread=True, exit_on_error=False, group="delete")
    def _delete(self, run_dir: Path) -> None:
        """Remove the folder off the UI thread (an adapter's checkpoints may be gigabytes)."""
        try:
            delete_run(run_dir)
        except (RunIsLive, OSError) as exc:
            self.app.call_from_thread(self.notify, f"not deleted: {exc}", severity="warning", timeout=12, markup=False)
            return
        self.app.call_from_thread(self._removed, run_dir)
        self.app.call_from_thread(self.notify, f"deleted {run_dir.name}", markup=False)

    def _removed(self, run_dir: Path) -> None:
        """A run left the folder: off the marks, and the list without it."""
        if run_dir in self.marked:
            self.marked.remove(run_dir)
        if self._read is not None:
            self._read = [run for run in self._read if run.run_dir != run_dir]
            self._redraw()
        self._look()

    def action_new(self) -> None:
        from loratop.tui.screens.sample_picker_screen import SamplePicker

        def picked(config: Path | None) -> None:
            if config is not None:
                self.loratop.open_editor(config)

        self.app.push_screen(SamplePicker(), picked)


def no_parent_run(run: RunSummary) -> str:
    """Why ``c`` cannot compare ``run`` with its parent, naming the parent.

    A run started from a sample (or any config file) has a config for a parent, which has no
    loss curve of its own: say which, and what the run changed from it.
    """
    if not run.parent:
        return f"{run.name} has no parent (it was not rerun from another run or a config)"
    recorded = Path(run.parent)
    if recorded.suffix not in CONFIG_SUFFIXES and not recorded.is_file():
        return f"{run.name}'s parent run {recorded.name} is gone (not at {recorded} nor beside this run)"
    from loratop.preflight import samples

    folder = samples.samples_dir()
    is_sample = folder is not None and recorded.parent.resolve() == folder.resolve()
    what = f"the sample config {recorded.name}" if is_sample else f"the config {recorded.name}"
    text = f"{run.name}'s parent is {what}: a config, with no loss curve of its own to compare"
    changed = _changed_from(recorded, run)
    return f"{text}; {changed}" if changed else text


def _changed_from(config_file: Path, run: RunSummary) -> str | None:
    """What ``run``'s config changed from ``config_file`` (``changed from it: r 8 → 16, ...``), or
    that the file can no longer be read; ``None`` when the run recorded no config."""
    from loratop.preflight.config import ConfigError, load_config, validate_tree
    from loratop.tui.models.compare import change_label

    if not run.config:
        return None
    try:
        parent = load_config(config_file, check_files=False).model_dump(mode="json")
    except (ConfigError, OSError):
        return f"{config_file} can no longer be read"
    resolved, _ = validate_tree(run.config)  # both with today's defaults: a knob added since is no change
    label = change_label(parent, resolved.model_dump(mode="json") if resolved else run.config)
    return "no knob changed from it" if label == "same config" else f"changed from it: {label}"
