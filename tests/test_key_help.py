"""The help screen and the command palette are built from the screens' BINDINGS, so a key is written once."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from textual.binding import Binding
from textual.widgets import OptionList, Static

from loratop.tui.app import LoratopApp
from loratop.tui.screens.help_screen import HelpScreen
from loratop.tui.screens.home_screen import HomeScreen
from loratop.tui.screens.key_help import KeyHelp, active_key_help, key_help, key_label
from loratop.tui.screens.monitor_screen import MonitorScreen
from loratop.widgets import LossChart
from tests.conftest import RECORDED_RUNS, until


def test_key_labels_read_as_typed() -> None:
    assert [key_label(k) for k in ("s", "question_mark", "escape", "enter", "space", "ctrl+p")] == [
        "s",
        "?",
        "esc",
        "enter",
        "space",
        "ctrl+p",
    ]


def test_key_help_keeps_what_the_footer_shows_with_the_tooltip_as_what_it_does() -> None:
    bindings = [
        Binding("escape,q", "back", "back"),
        Binding("l", "log_scale", "log y", tooltip="loss chart: log scale on/off"),
        Binding("tab", "app.focus_next", "Focus Next", show=False),
        Binding("z", "nothing"),
        ("r", "reload", "refresh"),
    ]

    assert key_help(bindings) == [
        KeyHelp("esc/q", "back", "back", "back"),
        KeyHelp("l", "log_scale", "log y", "loss chart: log scale on/off"),
        KeyHelp("r", "reload", "refresh", "refresh"),
    ]


def test_the_help_lists_every_monitor_key_and_the_home_keys_from_their_bindings(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(RECORDED_RUNS / "tiny-r8", run_dir)
    app = LoratopApp(run_dir)

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            shown = "\n".join(str(w.render()) for w in app.screen.query(Static))
            table = app.screen.key_table()
            keys = [str(cell) for cell in table.columns[0].cells]
            texts = [str(cell) for cell in table.columns[1].cells]
            monitor = key_help(MonitorScreen.BINDINGS, hidden={"back"})  # the first screen: q quits
            assert monitor == active_key_help(app.screen_stack[-2])
            assert keys == [row.keys for row in monitor] + ["ctrl+p"]
            assert texts[:-1] == [row.text for row in monitor]
            assert all(f"{row.keys} {row.label}" in shown for row in key_help(HomeScreen.BINDINGS))

    asyncio.run(drive())


def test_every_monitor_key_is_in_the_palette_and_runs_its_action(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(RECORDED_RUNS / "tiny-r8", run_dir)
    app = LoratopApp(run_dir)

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            commands = {command.help: command for command in app.get_system_commands(screen)}
            for row in active_key_help(screen):
                assert f"key: {row.keys}" in commands
                assert commands[f"key: {row.keys}"].title.lower() == row.text.lower()
            await app.run_action("command_palette")
            await pilot.pause()
            await pilot.press(*"loss chart: log")

            def matched() -> bool:  # the palette searches on a worker: its list may lag the typing
                options = app.screen.query_one(OptionList)
                at = options.highlighted
                return at is not None and "log scale" in str(options.get_option_at_index(at).prompt)

            await until(pilot, matched, 10, "the log-scale command highlighted")
            await pilot.press("enter")
            await until(pilot, lambda: screen.query_one(LossChart).log_scale, 10, "the chart in log scale")

    asyncio.run(drive())
