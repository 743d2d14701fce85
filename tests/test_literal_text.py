"""Text from a run is data, never markup (a fault pass): square brackets from a run name, a
config path, an error, a log line or an alert show as written, on every screen, table,
notice and export, and a dashboard that crashes all the same exits non-zero.

Llama and Mistral chat templates use ``[INST]``/``[/INST]``, torchrun prefixes a rank's lines
with ``[rank1]:``, and a run may be named ``lora[r16]``: read as Textual or Rich markup, such
text vanished (``lora[r16]`` showed as ``lora``) or raised ``MarkupError`` and took the
dashboard down. The runs here are recorded runs copied and edited, their events written
through the protocol (:func:`loratop.core.events.encode`).
"""

from __future__ import annotations

import asyncio
import csv
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from textual.app import App

from loratop.cli import main as cli
from loratop.core import events as ev
from loratop.tui.app import LoratopApp
from loratop.tui.screens.compare_screen import CompareScreen
from loratop.tui.screens.home_screen import HomeScreen
from loratop.tui.screens.knob_editor_screen import KnobEditor
from loratop.tui.screens.monitor_screen import MonitorScreen
from loratop.widgets import MemoryPanel
from tests.conftest import read_events, screen_text, until

pytestmark = pytest.mark.faults

KEY_ERROR = "KeyError: '[/INST]'"
"""What LoratopCallback records for a script that raised ``KeyError('[/INST]')``."""
PAIRS = "ValueError: expects '[INST]' ... '[/INST]' pairs"
LOG_LINE = "chat template: a turn ends in [/] where [/INST] was expected"
RANK_LINE = "[rank1]: torch.distributed.DistBackendError: [/] connection reset"
PATH_A = "/data/chats[/v2].jsonl"
PATH_B = "chats[v2].jsonl"
WIDE = (160, 40)
ENVELOPE = ("v", "seq", "t", "type")


def _failed_run(runs: Path, name: str, data_path: str, ending: list[tuple[str, dict[str, Any]]]) -> Path:
    """The recorded tiny-r8, copied as ``name`` with ``data_path`` in its config, its
    ``run_finished`` replaced by the events of ``ending`` (numbered on from there)."""
    run_dir = runs / name
    shutil.copytree(runs / "tiny-r8", run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"]["path"], config["output_dir"] = data_path, str(run_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    events = [e for e in read_events(run_dir) if e["type"] != ev.RUN_FINISHED]
    for event in events:
        if event["type"] == ev.RUN_STARTED:
            event["run_name"], event["config"] = name, config
    last_t = events[-1]["t"]
    lines = [ev.encode(e["seq"], e["type"], {k: v for k, v in e.items() if k not in ENVELOPE}, e["t"]) for e in events]
    seq = events[-1]["seq"]
    for i, (type_, fields) in enumerate(ending, start=1):
        lines.append(ev.encode(seq + i, type_, fields, last_t + i / 10))
    (run_dir / "events.jsonl").write_bytes(b"".join(lines))
    return run_dir


def _bracketed_runs(runs: Path) -> tuple[Path, Path]:
    """``lora[r16]``: a script's run that died on ``KeyError('[/INST]')`` after a warning with
    ``[/]``; ``lora[r32]``: a run of two ranks whose rank 1 failed on unpaired ``[INST]`` tags."""
    a = _failed_run(
        runs,
        "lora[r16]",
        PATH_A,
        [
            (ev.LOG, {"message": LOG_LINE, "level": "warning"}),
            (
                ev.RUN_FINISHED,
                {
                    "status": ev.FAILED,
                    "duration_s": 13.0,
                    "error": {
                        "message": KEY_ERROR,
                        "traceback": [
                            '  File "train.py", line 41, in format_chat',
                            "    close = TAGS['[/INST]']",
                            KEY_ERROR,
                        ],
                    },
                },
            ),
        ],
    )
    b = _failed_run(
        runs,
        "lora[r32]",
        PATH_B,
        [
            (ev.ALERT, {"kind": "rank_lost", "step": 60, "message": f"rank 1 (node 0, local rank 1) failed: {PAIRS}"}),
            (ev.RUN_FINISHED, {"status": ev.FAILED, "duration_s": 13.0, "error": {"message": RANK_LINE}}),
        ],
    )
    for run_dir in (a, b):
        assert ev.RUN_FINISHED in {e["type"] for e in read_events(run_dir)}  # every line decodes
    return a, b


def _flat(app: App[Any]) -> str:
    """The screen as one line (a long text wraps in its box)."""
    return " ".join(screen_text(app).split())


async def _monitor_ended(app: LoratopApp, pilot: Any) -> MonitorScreen:
    screen = app.screen
    assert isinstance(screen, MonitorScreen)
    await until(pilot, lambda: screen.state.finished is not None, 10, "the run's end")
    await until(pilot, lambda: "failed after" in screen_text(app), 5, "the outcome")
    return screen


def test_attach_shows_the_error_traceback_and_log_line_as_written(runs: Path) -> None:
    a, _ = _bracketed_runs(runs)
    app = LoratopApp(a, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=WIDE) as pilot:
            await _monitor_ended(app, pilot)
            text = _flat(app)
            assert "lora[r16] · tiny" in text, "the run name in the header"
            assert f"failed after 13s: {KEY_ERROR}" in text
            assert "close = TAGS['[/INST]']" in text, "the traceback's lines"
            assert f"warning: {LOG_LINE}" in text, "the log line on the status line"

    asyncio.run(drive())


def test_attach_shows_a_lost_ranks_alert_and_a_rank_prefixed_error_as_written(runs: Path) -> None:
    _, b = _bracketed_runs(runs)
    app = LoratopApp(b, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=WIDE) as pilot:
            await _monitor_ended(app, pilot)
            text = _flat(app)
            assert f"rank 1 (node 0, local rank 1) failed: {PAIRS}" in text
            assert f"rank 0 saw: {RANK_LINE}" in text

    asyncio.run(drive())


def test_x_exports_a_bracketed_run_and_its_notice_svg_and_csv_say_it_as_written(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    a, _ = _bracketed_runs(runs)
    app = LoratopApp(a, runs_root=runs)

    async def drive() -> None:
        async with app.run_test(size=WIDE, notifications=True) as pilot:
            await _monitor_ended(app, pilot)
            await pilot.press("x")
            await until(pilot, lambda: "lora[r16]-metrics.csv" in screen_text(app), 5, "the export notice, as written")

    asyncio.run(drive())
    out = tmp_path / "loratop-exports"
    with (out / "lora[r16]-metrics.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 60
    exported = [ev.decode_line(line) for line in (out / "lora[r16]-events.jsonl").read_bytes().splitlines()]
    finished = [e for e in exported if e and e["type"] == ev.RUN_FINISHED]
    assert finished[0]["error"]["message"] == KEY_ERROR
    svg = (out / "lora[r16].svg").read_text()
    assert "[/INST]" in svg and "lora[r16]" in svg


def test_the_home_screen_lists_lora_r16_and_lora_r32_by_their_names(tmp_path: Path, runs: Path) -> None:
    root = tmp_path / "runs[v2]"  # the runs folder's own name is shown too
    runs.rename(root)
    _bracketed_runs(root)
    app = LoratopApp(None, runs_root=root)

    async def drive() -> None:
        async with app.run_test(size=WIDE, notifications=True) as pilot:
            assert isinstance(app.screen, HomeScreen)
            await until(pilot, lambda: "lora[r32]" in screen_text(app), 5, "the runs listed")
            text = screen_text(app)
            assert "lora[r16]" in text and "lora[r32]" in text
            assert f"runs in {root}/" in text
            app.screen.sort_key = "name"
            app.screen.action_reload()
            await pilot.pause()
            await pilot.press("c")  # lora[r16]: no parent to compare with, said in a notice
            await until(pilot, lambda: "lora[r16] has no parent" in _flat(app), 5, "the notice, as written")

    asyncio.run(drive())


def test_compare_shows_bracketed_names_and_data_paths_as_written(runs: Path) -> None:
    a, b = _bracketed_runs(runs)
    app = LoratopApp(None, runs_root=runs, compare=[a, b])

    async def drive() -> None:
        async with app.run_test(size=WIDE) as pilot:
            assert isinstance(app.screen, CompareScreen)
            # The runs are folded on a worker: wait for the legend, the titles and the diff.
            await until(
                pilot,
                lambda: "data.path" in screen_text(app) and screen_text(app).count("lora[r32]") >= 2,
                5,
                "the legend, the column titles and the config diff",
            )
            text = screen_text(app)
            assert "A lora[r16]" in text and "B lora[r32]" in text, "the legend and the column titles"
            assert PATH_A in text and PATH_B in text, "the config diff"
            assert text.count("lora[r16]") >= 2 and text.count("lora[r32]") >= 2

    asyncio.run(drive())


def test_the_editor_on_a_bracketed_run_names_it_and_its_data_path_as_written(runs: Path) -> None:
    a, _ = _bracketed_runs(runs)
    app = LoratopApp(None, runs_root=runs, edit=a)

    async def drive() -> None:
        async with app.run_test(size=WIDE, notifications=True) as pilot:
            assert isinstance(app.screen, KnobEditor)
            await pilot.pause()
            assert "from run lora[r16]" in screen_text(app)
            await pilot.press("ctrl+r")  # the data file is not on this box: refused, saying which
            await until(pilot, lambda: f"'{PATH_A}': file not found" in _flat(app), 5, "the refusal, as written")
            assert isinstance(app.screen, KnobEditor), "nothing launched"

    asyncio.run(drive())


def test_the_memory_panel_tooltip_shows_an_nvml_error_as_written() -> None:
    note = "NVML: driver/library version mismatch [/] libnvidia-ml [INST] 570 vs 550 (reboot after an upgrade)"

    class Panel(App[None]):
        def compose(self) -> Any:
            yield MemoryPanel()

    app = Panel()

    async def drive() -> None:
        async with app.run_test(size=(60, 12), tooltips=True) as pilot:
            panel = app.query_one(MemoryPanel)
            panel.update({"gpu_state": "nvml_error", "gpu_note": note, "host": {"rss": 1 << 30}})
            await pilot.hover(MemoryPanel)
            await until(pilot, lambda: "upgrade)" in screen_text(app), 5, "the tooltip (the panel cuts the line)")
            assert note in _flat(app)

    asyncio.run(drive())


@pytest.mark.parametrize(
    "argv",
    [["attach", "lora[r16]"], ["compare", "lora[r16]", "lora[r32]"], ["edit", "lora[r16]"], []],
    ids=["attach", "compare", "edit", "home"],
)
def test_a_dashboard_that_crashes_exits_non_zero(
    runs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    _bracketed_runs(runs)

    def crash(self: LoratopApp) -> None:
        raise RuntimeError("a bug in the dashboard")

    monkeypatch.setattr(LoratopApp, "on_mount", crash)
    monkeypatch.setattr(LoratopApp, "run", lambda self: App.run(self, headless=True, size=(100, 30)))
    code = cli.main([*argv, "--runs-dir", str(runs)])
    assert code != 0, "a crash must not look like success to the shell"
    assert "a bug in the dashboard" in capsys.readouterr().err


def test_loratop_attach_opens_the_failed_run_and_q_exits_0(
    runs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report's case end to end: ``loratop attach`` on the run that died on ``KeyError('[/INST]')``."""
    _bracketed_runs(runs)

    async def quit_once_drawn(pilot: Any) -> None:
        await until(pilot, lambda: KEY_ERROR in screen_text(pilot.app), 10, "the outcome")
        await pilot.press("q")

    monkeypatch.setattr(
        LoratopApp, "run", lambda self: App.run(self, headless=True, size=WIDE, auto_pilot=quit_once_drawn)
    )
    assert cli.main(["attach", "lora[r16]", "--runs-dir", str(runs)]) == 0
    assert "Error" not in capsys.readouterr().err
