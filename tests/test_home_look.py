"""The home screen reads runs only on its worker (issue 27, item 3): the first look and every reload
run off the UI thread, behind an honest "reading runs…"; a reload keeps the rows shown until the
new ones arrive; a new sort or a mark re-sorts the runs already read, without a look at the disk.

The catalog's real look is wrapped (never replaced) to record its thread and to hold it at a gate,
so the screen can be seen while a look is under way.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Static

from loratop.core.runs import RunCatalog
from loratop.tui.app import LoratopApp
from tests.conftest import until


class HeldLooks:
    """Every ``RunCatalog.runs`` call: which thread made it, each held until :attr:`gate` opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[threading.Thread] = []
        self.gate = threading.Event()
        real = RunCatalog.runs

        def runs(catalog: RunCatalog, *args: Any, **kwargs: Any) -> Any:
            self.threads.append(threading.current_thread())
            if threading.current_thread() is not threading.main_thread():
                self.gate.wait(20)  # never hold the UI thread (the old code looked there): it would hang
            return real(catalog, *args, **kwargs)

        monkeypatch.setattr(RunCatalog, "runs", runs)


def _hint(app: LoratopApp) -> str:
    return " ".join(str(app.screen.query_one("#home-hint", Static).render()).split())


def _names(table: DataTable[Any]) -> list[str]:
    return [Path(str(row.value)).name for row in table.rows]


def test_the_first_look_runs_on_a_worker_behind_a_placeholder_then_fills_the_table(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import loratop.tui.screens.home_screen as home

    monkeypatch.setattr(home, "LIVE_REFRESH_S", 3600.0)  # only the looks this test asks for
    looks = HeldLooks(monkeypatch)
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(120, 30)) as pilot:
            table = app.screen.query_one(DataTable)
            await until(pilot, lambda: bool(looks.threads), 10, "the first look")
            await pilot.pause()
            assert looks.threads[0] is not threading.main_thread(), "the first look read runs on the UI thread"
            assert _hint(app) == f"reading runs under {runs}/…"
            assert table.row_count == 0  # nothing made up while the look is held
            looks.gate.set()
            await until(pilot, lambda: table.row_count == 3, 10, "the table to show the runs")
            assert "sorted by started" in _hint(app)
            assert sorted(_names(table)) == ["tiny-lr-high", "tiny-r16", "tiny-r8"]

            # A reload: the rows shown stay while the look is under way, off the UI thread.
            looks.gate.clear()
            before = len(looks.threads)
            await pilot.press("r")
            await until(pilot, lambda: len(looks.threads) > before, 10, "the reload's look")
            await pilot.pause(0.3)
            assert table.row_count == 3, "a reload never empties the table"
            assert all(thread is not threading.main_thread() for thread in looks.threads)
            looks.gate.set()
            await until(pilot, lambda: not app.screen._looking(), 10, "the reload to finish")  # type: ignore[attr-defined]

            # A new sort re-sorts the runs read: no look at the disk.
            before = len(looks.threads)
            await pilot.press("o")
            await pilot.pause()
            assert "sorted by name" in _hint(app)
            assert _names(table) == ["tiny-lr-high", "tiny-r16", "tiny-r8"]
            await pilot.press("space")
            await pilot.pause()
            assert len(looks.threads) == before, "a sort or a mark read the disk"
            assert str(table.get_row_at(0)[0]).startswith("● ")
            app.exit()

    asyncio.run(drive())


def test_a_first_look_that_fails_says_so_instead_of_reading_forever(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runs folder fails as an unreadable one would: the hint says why, not "reading runs…"."""

    def unreadable(catalog: RunCatalog, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(runs))

    monkeypatch.setattr(RunCatalog, "runs", unreadable)
    app = LoratopApp(None, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: "cannot read" in _hint(app), 10, "the failure said")
            assert f"cannot read the runs under {runs}/: PermissionError" in _hint(app)
            app.exit()

    asyncio.run(drive())
