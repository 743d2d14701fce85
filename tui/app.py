"""The loratop dashboard (Textual): the App, which opens the first screen and owns what several screens share.

The screens live in ``tui.screens``, one module each: the run history (home), one run's
monitor, the knob editor, the compare screen and their dialogs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import App, SystemCommand
from textual.screen import Screen
from textual.worker import Worker

from loratop.core.run_dir import RunDirError
from loratop.core.runs import DEFAULT_ROOT
from loratop.tui.models.export import EXPORT_DIR
from loratop.tui.models.run_watcher import RunWatcher
from loratop.tui.screens.compare_screen import CompareScreen
from loratop.tui.screens.help_screen import HelpScreen
from loratop.tui.screens.home_screen import HomeScreen
from loratop.tui.screens.key_help import KeyHelp, active_key_help, key_help
from loratop.tui.screens.monitor_screen import MonitorScreen

if TYPE_CHECKING:
    from loratop.core.run_state import RunState
    from loratop.preflight.config import RunConfig
    from loratop.preflight.launcher import LaunchedRun


class LoratopApp(App[str]):
    """The dashboard: the run history (home), one run's monitor, the knob editor or the compare screen.

    ``run()`` returns how the session ended: ``DETACHED``, ``STOPPED`` or ``QUIT``
    (``tui.screens.monitor_screen``), or ``None`` when the App itself quit.
    """

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
        next_run: RunState | None = None,
        process: subprocess.Popen[bytes] | None = None,
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
            next_run: With ``edit`` a finished run, its events folded (the CLI has read them): the
                editor with its next run's proposals applied (``loratop next --edit``).
            process: The trainer of ``run_dir``, when this process launched it (reaped when it exits).
        """
        super().__init__()
        self._run_dir = run_dir
        self._pipe_fd = pipe_fd
        self.runs_root = runs_root
        self._notice = notice
        self._compare = compare
        self._compare_x = compare_x
        self._edit = edit
        self._next_run = next_run
        self._process = process
        self.ended_on: Path | None = None
        """The run whose monitor ended the session (detached, stopped or quit there): the CLI's
        "come back with" names it, which after a launch from the editor is not the first run."""
        self.watchers: dict[Screen[Any], RunWatcher] = {}
        """The run watchers, by the screen each posts to (:meth:`watch_run`)."""
        self._launched: dict[Screen[Any], tuple[int | None, subprocess.Popen[bytes] | None]] = {}
        """A launched trainer's pipe and process, held for its monitor until it mounts (:meth:`open_monitor`)."""

    def on_mount(self) -> None:
        if self._run_dir is not None:
            self.push_screen(self.open_monitor(self._run_dir, self._pipe_fd, self._process))
        elif self._compare:
            self.push_screen(CompareScreen(self._compare, self._compare_x))
        elif self._edit is not None:
            if self._next_run is not None:
                opened = self.open_next_run(self._edit, self._next_run)
            else:
                opened = self.open_editor(self._edit)
            if not opened:  # the CLI checked it; should it fail now, the history
                self.push_screen(HomeScreen(self.runs_root))
        else:
            self.push_screen(HomeScreen(self.runs_root))
        if self._notice:
            self.notify(self._notice, timeout=10, markup=False)

    def on_unmount(self) -> None:
        """The App exits: every watcher stops (the runs train on; none is signalled), and a
        launched run's pipe whose monitor never mounted is closed."""
        for screen in list(self.watchers):
            self.stop_watching(screen)
        for pipe_fd, _ in self._launched.values():
            if pipe_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(pipe_fd)
        self._launched.clear()

    def open_monitor(
        self, run_dir: Path, pipe_fd: int | None = None, process: subprocess.Popen[bytes] | None = None
    ) -> MonitorScreen:
        """A monitor of ``run_dir``; for a run this dashboard launched, the App keeps its events
        pipe and its trainer (reaped when it exits) for the watcher the monitor starts on mount."""
        monitor = MonitorScreen(run_dir)
        if pipe_fd is not None or process is not None:
            self._launched[monitor] = (pipe_fd, process)
        return monitor

    def watch_run(self, screen: Screen[Any], run_dir: Path) -> None:
        """Watch ``run_dir`` on a thread of the App's and post what it finds to ``screen``
        (:class:`~loratop.tui.models.run_watcher.RunWatcher`), until :meth:`stop_watching`;
        through the pipe :meth:`open_monitor` kept for ``screen``, if any."""
        self.stop_watching(screen)
        pipe_fd, process = self._launched.pop(screen, (None, None))
        watcher = RunWatcher(run_dir, screen.post_message, pipe_fd, process)
        self.watchers[screen] = watcher
        watcher.start()

    def stop_watching(self, screen: Screen[Any]) -> None:
        """Stop the watcher that posts to ``screen``; its trainer trains on (reaped when it exits)."""
        watcher = self.watchers.pop(screen, None)
        if watcher is not None:
            watcher.stop()

    def open_editor(self, target: Path) -> bool:
        """The knob editor on a config file or a run folder (then its config.yaml: rerun with changes).

        Its ``esc`` goes back to the screen it was opened from, or leaves the dashboard when it is
        the first screen (``loratop edit``).

        Returns:
            Whether it opened (else a notice says why).
        """
        from loratop.preflight.config import ConfigError
        from loratop.tui.screens.knob_editor_screen import editor_for_config, editor_for_run

        try:
            if target.is_dir():
                editor = editor_for_run(target, self.runs_root)
            else:
                editor = editor_for_config(target, self.runs_root)
        except ConfigError as exc:
            self.notify("\n".join(exc.problems), title="cannot edit", severity="error", timeout=10, markup=False)
            return False
        self.push_screen(editor)
        return True

    def open_next_run(self, run_dir: Path, state: RunState | None = None) -> bool:
        """The knob editor on a finished run with the changes its record calls for applied, unsaved,
        and listed with their evidence (:mod:`loratop.preflight.next_run`): the user confirms.

        Args:
            run_dir: The run.
            state: Its events, folded (the monitor's); read from its folder when omitted.

        Returns:
            Whether the editor opened (else a notice says why: no proposal, no config).
        """
        from loratop.core.run_dir import CONFIG
        from loratop.core.run_summary import fold_run
        from loratop.preflight.config import ConfigError, read_yaml
        from loratop.preflight.next_run import next_run
        from loratop.tui.screens.knob_editor_screen import editor_for_run

        try:
            plan = next_run(state if state is not None else fold_run(run_dir)[0], read_yaml(run_dir / CONFIG))
            editor = editor_for_run(run_dir, self.runs_root, plan)
        except (ConfigError, ValueError) as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            self.notify("\n".join(problems), title="no next run", severity="error", timeout=10, markup=False)
            return False
        if not plan.proposals:
            self.notify("\n".join(plan.lines(60)), title="no next run", timeout=10, markup=False)
            return False
        self.push_screen(editor)
        return True

    def launch_config(
        self, config: RunConfig, source: Path | None, replace: Screen[Any] | None = None
    ) -> Worker[Path | None]:
        """Launch a checked config and watch it; ``replace`` (the editor) gives way to the new
        monitor, over the run history (:meth:`_over_history`).

        The checks before a launch read the data file and may ask the hub (up to 3 s), and the
        launch makes the run folder: all of it runs on a worker thread, so the screen stays
        live; the monitor opens once the trainer has started.

        Returns:
            The worker; its result is the run folder, or ``None`` when the run could not be
            launched (said in a notice). While one launch is under way another is not
            started (a second press of launch): that one's worker is returned.
        """
        under_way = [worker for worker in self.workers if worker.group == "launch" and worker.is_running]
        if under_way:
            self.notify("a launch is under way: its monitor opens once the trainer has started", markup=False)
            return under_way[0]
        self.notify(f"checking and launching {Path(config.output_dir or 'run').name}…", markup=False, timeout=3)
        return self._launch(config, source, replace)

    @work(thread=True, group="launch", exit_on_error=False)
    def _launch(self, config: RunConfig, source: Path | None, replace: Screen[Any] | None) -> Path | None:
        from loratop.preflight.launch_checks import disk_space_warning
        from loratop.preflight.launcher import CannotRunHere, launch

        try:
            space = disk_space_warning(config)
            if space is not None:
                self.call_from_thread(self.notify, space, severity="warning", timeout=15, markup=False)
            run = launch(config, source)
        except (RunDirError, CannotRunHere, OSError) as exc:
            # OSError: the box itself said no (no process or pipe to be had, a data file gone):
            # said like a refusal, never a worker that dies while "launching…" stays on screen.
            why = f"{exc.strerror} ({exc.filename or 'starting the trainer'})" if isinstance(exc, OSError) else exc
            self.call_from_thread(
                self.notify, str(why), title="cannot launch", severity="error", timeout=15, markup=False
            )
            return None
        self.call_from_thread(self._watch_launched, run, config, replace)
        return run.run_dir

    def _watch_launched(self, run: LaunchedRun, config: RunConfig, replace: Screen[Any] | None) -> None:
        """On the UI thread: the launched run's monitor, where the editor was (or on top)."""
        monitor = self.open_monitor(run.run_dir, run.events_fd, run.process)
        if replace is not None and self.screen is replace:
            self._over_history(monitor)
        else:
            self.push_screen(monitor)
        self.notify(
            f"launched {run.run_dir.name}" + (f" (parent: {Path(config.parent).name})" if config.parent else ""),
            markup=False,
        )

    def _over_history(self, monitor: MonitorScreen) -> None:
        """The new run's monitor in the editor's place, right over the run history: its ``esc``
        goes to the history, which lists the new run and the one it was edited from, both live.

        The screens between the history and the editor (the monitor of the run it was edited
        from) go: each rerun would otherwise leave one more monitor for ``esc`` to walk back
        through. Where the dashboard opened on a run or the editor (``loratop run``, ``loratop
        edit``), the history is put under the new monitor. A run whose monitor goes keeps
        training (its trainer is still reaped when it exits)."""
        while len(self.screen_stack) > 2 and not isinstance(self.screen, HomeScreen):
            self.pop_screen()  # stack[0] is Textual's own default screen
        if not isinstance(self.screen, HomeScreen):
            self.switch_screen(HomeScreen(self.runs_root))
        self.push_screen(monitor)

    def export_run(self, run_dir: Path, screen: bool = True) -> Worker[list[Path]]:
        """Write a run's metrics CSV and events JSONL (and this screen's SVG) to ``loratop-exports/``,
        on a worker: a long run's events are read whole. The screen is taken now, as it is at the
        key press; a toast says what was written, or why not. The worker's result: the files."""
        svg = self.export_screenshot() if screen else None
        return self._export(run_dir, svg)

    @work(thread=True, group="export", exit_on_error=False)
    def _export(self, run_dir: Path, svg: str | None) -> list[Path]:
        from loratop.tui.models.export import export_run

        try:
            written = export_run(run_dir, EXPORT_DIR)
            if svg is not None:
                path = EXPORT_DIR / f"{run_dir.name}.svg"
                path.write_text(svg, encoding="utf-8")
                written.append(path)
        except OSError as exc:
            self.call_from_thread(self.notify, f"export failed: {exc}", severity="error", markup=False)
            return []
        # One file a line, named within the folder: a long path would wrap mid-word in a toast.
        names = "\n".join(f"  {p.name}" for p in written)
        self.call_from_thread(self.notify, f"exported to {EXPORT_DIR}/:\n{names}", timeout=8, markup=False)
        return written

    def action_export_screen(self) -> None:
        """Save the current screen as SVG in ``loratop-exports/``."""
        try:
            path = self.save_screenshot(path=str(EXPORT_DIR))
        except OSError as exc:
            self.notify(f"export failed: {exc}", severity="error", markup=False)
            return
        self.notify(f"saved to {EXPORT_DIR}/:\n  {Path(path).name}", markup=False)

    def action_help(self) -> None:
        """The keys (``?``): this screen's in full; a run's monitor's and the run history's in brief."""
        screen = self.screen
        elsewhere: list[tuple[str, list[KeyHelp]]] = []
        if isinstance(screen, HomeScreen):
            from_here = MonitorScreen.hidden_actions(has_screen_below=True)
            elsewhere.append(("A run's monitor (enter)", key_help(MonitorScreen.BINDINGS, from_here)))
        else:
            elsewhere.append(("Home screen (loratop)", key_help(HomeScreen.BINDINGS)))
        self.push_screen(HelpScreen(active_key_help(screen), elsewhere))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """Every key of the screen under the palette is also in the command palette (ctrl+p), by what it does."""
        yield from super().get_system_commands(screen)
        yield SystemCommand("Save screen as SVG", "into loratop-exports/", self.action_export_screen)
        for row in active_key_help(screen):
            title = row.text[:1].upper() + row.text[1:]
            yield SystemCommand(title, f"key: {row.keys}", partial(screen.run_action, row.action))
