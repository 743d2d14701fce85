"""One damaged run never hides the others (issue 24, item 3), nor crashes a reader.

Each case damages one copy of a recorded run in a runs folder beside a healthy copy, the way a
crash mid-write, a hand edit, another tool or a hostile file could, and then lists, compares,
exports and folds (attach's first read) the folder: the healthy run is listed whole, the
damaged one is listed too (as damaged where its metadata is), and nothing raises. A fuzz test
does the same with random and mutated lines and files.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from loratop.cli import main as cli
from loratop.core import events as ev
from loratop.core.run_index import INDEX
from loratop.core.run_summary import SUMMARY, fold_run, settle_finished_run
from loratop.core.runs import RunCatalog, list_runs
from loratop.tui.models.export import export_files
from tests.conftest import RECORDED_RUNS, until

pytestmark = pytest.mark.faults

HEALTHY = RECORDED_RUNS / "tiny-r8"
DEEP = 100_000


def _append_event(type_: str, **fields: object) -> Callable[[Path], None]:
    """Append one well-formed line whose values are out of any sane range."""

    def damage(run: Path) -> None:
        events = (run / "events.jsonl").read_bytes()
        seq = events.count(b"\n")
        line = {"v": 1, "seq": seq, "t": 1.0e9, "type": type_, **fields}
        (run / "events.jsonl").write_bytes(events + json.dumps(line).encode() + b"\n")

    return damage


def _write(name: str, data: str | bytes) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return damage


def _with_index(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """Build the run's index and summary cache first (as the run's end leaves them), then damage them."""

    def both(run: Path) -> None:
        assert settle_finished_run(run)
        assert (run / INDEX / SUMMARY).is_file()
        damage(run)

    return both


def _random_index(run: Path) -> None:
    rng = random.Random(7)
    for name in ("steps.bin", "memory.bin"):
        (run / INDEX / name).write_bytes(rng.randbytes(64 * 32))


def _summary_of_wrong_types(run: Path) -> None:
    path = run / INDEX / SUMMARY
    cached = json.loads(path.read_text())
    cached["facts"] = {key: [1, {"x": None}] for key in cached["facts"]}
    path.write_text(json.dumps(cached))


DAMAGE = {
    "step-2**63": _append_event(ev.STEP, step=2**63, loss=1.0, lr=1e-4, grad_norm=0.5, tokens=10),
    "tokens-2**63": _append_event(ev.STEP, step=61, loss=1.0, lr=1e-4, grad_norm=0.5, tokens=2**63),
    "memory-2**64": _append_event(
        ev.MEMORY,
        host={"rss": 2**64, "total": 1, "available": 1},
        gpu_state="ok",
        gpus=[{"index": 0, "name": "x", "used": 2**64, "total": 2**65, "free": 0}],
    ),  # fmt: skip
    "negative-2**63-1": _append_event(ev.STEP, step=-(2**63) - 1, loss=1.0, tokens=1),
    "nested-event-line": _write("events.jsonl", (HEALTHY / "events.jsonl").read_text() + "[" * DEEP + "\n"),
    "nested-event-field": lambda run: _append_event(ev.LOG, message="x", extra="[" * 10)(run),
    "nested-status": _write("status.json", '{"a":' * DEEP + "1" + "}" * DEEP),
    "nested-config": _write("config.yaml", "lora: " + "[" * DEEP + "]" * DEEP),
    "ended_at-10**400": _write("status.json", json.dumps({"state": "finished", "ended_at": 10**400})),
    "started_at-10**400": _write("status.json", '{"started_at": 1' + "0" * 400 + "}"),
    "5000-digit-config": _write("config.yaml", "training:\n  seed: " + "9" * 5000 + "\n"),
    "summary-wrong-types": _with_index(_summary_of_wrong_types),
    "index-random-bytes": _with_index(_random_index),
    "index-meta-nested": _with_index(_write(f"{INDEX}/meta.json", "[" * DEEP)),
    "huge-loss": _append_event(ev.STEP, step=61, loss=1e308, lr=1e-4, grad_norm=0.5, tokens=10),
    "minus-huge-loss": _append_event(ev.STEP, step=61, loss=-1e308, lr=1e-4, grad_norm=0.5, tokens=10),
}


def _runs(tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    root = tmp_path / "runs"
    for name in ("healthy", "damaged"):
        shutil.copytree(HEALTHY, root / name, ignore=shutil.ignore_patterns(INDEX))
    damage(root / "damaged")
    return root


def _check_every_reader(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listed = {run.name: run for run in list_runs(root)}
    assert set(listed) == {"healthy", "damaged"}
    healthy = listed["healthy"]
    assert healthy.status == "completed" and healthy.step == 60 and not healthy.damaged
    live = {run.name: run for run in RunCatalog(root).runs()}  # the home screen's list (and serve's)
    assert set(live) == {"healthy", "damaged"} and live["healthy"].step == 60
    assert cli.main(["ls", "--runs-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "healthy" in out and "damaged" in out
    assert cli.main(["compare", "healthy", "damaged", "--runs-dir", str(root), "--no-tui"]) == 0
    assert "healthy" in capsys.readouterr().out, "compare shows both"
    for name in ("healthy", "damaged"):
        fold_run(root / name)  # what attach reads first
        export_files(root / name, tmp_path / "exports" / name)


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_one_damaged_run_never_hides_the_others(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    root = _runs(tmp_path, DAMAGE[case])
    _check_every_reader(root, tmp_path, capsys)
    # A second look, as the home screen's timer makes, finds the same files (a look writes nothing).
    _check_every_reader(root, tmp_path, capsys)


def _mutations(line: bytes, rng: random.Random) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:  # flip bytes
        data = bytearray(line)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if choice == 1:  # cut
        return line[: rng.randrange(len(line))]
    if choice == 2:  # a number made huge or odd
        return line.replace(b":1", b":" + rng.choice([b"1" * 30, b"1e400", b"-1e400", b"NaN", b"-0", b"true"]), 1)
    if choice == 3:  # a value's type swapped
        return line.replace(b'"', b"[", 1) if rng.random() < 0.5 else line.replace(b"0", b'"0"', 1)
    if choice == 4:  # random bytes
        return rng.randbytes(rng.randint(1, 200))
    return line.replace(b"{", b'{"x":' + b"[" * rng.randint(1, 3000) + b"]" * rng.randint(0, 3000) + b",", 1)


@pytest.mark.parametrize("seed", range(6))
def test_fuzzed_run_files_never_crash_a_reader(tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int) -> None:
    rng = random.Random(seed)
    root = tmp_path / "runs"
    shutil.copytree(HEALTHY, root / "healthy", ignore=shutil.ignore_patterns(INDEX))
    lines = (HEALTHY / "events.jsonl").read_bytes().splitlines(keepends=True)
    for n in range(4):
        run = root / f"fuzz-{n}"
        shutil.copytree(HEALTHY, run, ignore=shutil.ignore_patterns(INDEX))
        mutated = [_mutations(line, rng) + b"\n" if rng.random() < 0.15 else line for line in lines]
        (run / "events.jsonl").write_bytes(b"".join(mutated))
        for name in ("status.json", "config.yaml"):
            if rng.random() < 0.6:
                (run / name).write_bytes(_mutations((run / name).read_bytes(), rng))
        if n % 2:
            for each in root.iterdir():  # leave an index and a summary cache, then damage them too
                settle_finished_run(each)
            for name in ("steps.bin", "memory.bin", "rare.jsonl", "meta.json", SUMMARY):
                path = run / INDEX / name
                if path.is_file() and rng.random() < 0.7:
                    path.write_bytes(_mutations(path.read_bytes() or b"{}", rng))
    listed = {run.name: run for run in list_runs(root)}
    assert set(listed) == {"healthy", *(f"fuzz-{n}" for n in range(4))}
    assert listed["healthy"].step == 60 and not listed["healthy"].damaged
    assert cli.main(["ls", "--runs-dir", str(root)]) == 0
    RunCatalog(root).runs()
    assert (
        cli.main(["compare", "healthy", "fuzz-0", "fuzz-1", "fuzz-2", "fuzz-3", "--runs-dir", str(root), "--no-tui"])
        == 0
    )
    for run in sorted(root.iterdir()):
        fold_run(run)
        export_files(run, tmp_path / "exports" / run.name)


def test_a_run_no_check_foresaw_is_listed_as_damaged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last line of defence: whatever a run's files make a reader raise, that run is
    listed as damaged, with why, and every other run is listed."""
    import loratop.core.runs as runs_module

    root = _runs(tmp_path, lambda run: None)
    fold = runs_module.fold_run

    def fold_that_breaks(run_dir: Path) -> object:
        if run_dir.name == "damaged":
            raise RecursionError("maximum recursion depth exceeded")
        return fold(run_dir)

    monkeypatch.setattr(runs_module, "fold_run", fold_that_breaks)
    listed = {run.name: run for run in list_runs(root)}
    assert listed["healthy"].step == 60 and not listed["healthy"].damaged
    assert listed["damaged"].damaged == ("cannot be read: RecursionError: maximum recursion depth exceeded",)
    assert cli.main(["ls", "--runs-dir", str(root)]) == 0
    assert "damaged: damaged: cannot be read: RecursionError" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text", ["[" * DEEP, '{"stop": ' + "9" * 5000 + "}", '{"stop": 1e400}', "\xff\xfe", "x" * (2 << 20)]
)
def test_a_damaged_control_file_never_raises_into_the_users_training(tmp_path: Path, text: str) -> None:
    """control.json is read at the step boundaries of someone else's training (LoratopCallback):
    whatever it holds is no request, never an exception."""
    from loratop.core.run_dir import CONTROL, read_control
    from loratop.trainer.callback import LoratopCallback

    (tmp_path / CONTROL).write_bytes(text.encode("latin-1"))
    assert not read_control(tmp_path), "no request"
    policy = LoratopCallback(tmp_path).policy  # a script's run: ScriptRunPolicy
    policy.run_dir = tmp_path
    policy._read_requests()  # what on_step_end does at a step boundary
    assert policy.stop is None and policy.saves_asked == 0


def test_an_alias_bomb_or_a_deep_config_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(8)
    )
    for name, text, why in [
        ("bomb.yaml", bomb, "expands to more than 100,000 values"),
        ("deep.yaml", "lora: " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("digits.yaml", "training:\n  seed: " + "9" * 5000 + "\n", "malformed YAML"),
    ]:
        path = tmp_path / name
        path.write_text(text)
        assert cli.main(["check", str(path)]) == 2
        out = capsys.readouterr()
        assert why in out.err + out.out, (name, out)
        assert "Traceback" not in out.err + out.out


@pytest.mark.parametrize("extreme", [1e308, -1e308, 1.7e308])
def test_a_loss_at_the_edge_of_a_float_is_drawn_not_a_crash(extreme: float) -> None:
    """A diverged (or forged) run's loss of ±1e308 once crashed the dashboard's chart."""
    import asyncio

    from textual.app import App, ComposeResult

    from loratop.widgets import LossChart

    class ChartApp(App[None]):
        def compose(self) -> ComposeResult:
            yield LossChart()

    async def scenario() -> None:
        app = ChartApp()
        async with app.run_test(size=(80, 24)) as pilot:
            chart = app.query_one(LossChart)
            steps = [float(i) for i in range(1, 41)]
            loss = [2.0 - i / 40 for i in range(40)]
            loss[20] = extreme
            chart.update(steps, loss, loss, spikes=[(21.0, extreme)])
            await pilot.pause()
            assert chart.last_plotted_points > 0
            chart.log_scale = True
            await pilot.pause()
            chart.update([1.0, 2.0], [extreme, -extreme], [extreme, -extreme])
            await pilot.pause()

    asyncio.run(scenario())


def test_attach_to_a_run_it_cannot_read_says_so_instead_of_starting_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 24, item 8: attach on a finished run it could not fold read STARTING forever (the
    reader's error was swallowed). The fold is made to fail here as an unreadable file would."""
    import asyncio

    from textual.widgets import Static

    import loratop.tui.models.run_watcher as watcher
    from loratop.tui.app import LoratopApp

    root = _runs(tmp_path, lambda run: None)

    def unreadable(run_dir: Path, **_: object) -> object:
        raise PermissionError(13, "Permission denied", str(run_dir / "events.jsonl"))

    monkeypatch.setattr(watcher, "fold_run", unreadable)

    async def drive() -> None:
        app = LoratopApp(root / "damaged")
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen

            def shown(selector: str) -> str:
                return str(screen.query_one(selector, Static).render())

            # The header is redrawn a few times a second: wait for it.
            await until(pilot, lambda: "UNKNOWN" in shown("#run-header"), 30, "the header to say UNKNOWN")
            header, outcome = shown("#run-header"), shown("#outcome")
            assert "UNKNOWN" in header and "STARTING" not in header
            assert "cannot read this run's events: PermissionError" in outcome
            app.exit()

    asyncio.run(drive())
