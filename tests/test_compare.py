"""``loratop compare``: config diff, change labels, outcomes and the text report, on real runs."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from loratop.cli import main as cli
from loratop.core import events as ev
from loratop.core.runs import read_config
from loratop.tui.models.compare import (
    BLOCKS,
    change_label,
    column_names,
    config_diff,
    format_compare,
    load_compared,
    outcome_rows,
    sparklines,
)
from loratop.tui.models.panels import fmt_bytes, fmt_duration, fmt_loss
from tests.conftest import RECORDED_RUNS as RUNS
from tests.conftest import of_type, read_events, until


def _config(name: str) -> dict[str, Any]:
    config = read_config(RUNS / name)
    assert config is not None
    return config


def _write_run(run_dir: Path, events: list[tuple[str, dict[str, Any]]], t0: float = 1000.0) -> Path:
    """A synthetic run folder: events encoded by the real protocol, one second apart."""
    run_dir.mkdir(parents=True)
    lines = [ev.encode(seq, kind, fields, t=t0 + seq) for seq, (kind, fields) in enumerate(events)]
    (run_dir / "events.jsonl").write_bytes(b"".join(lines))
    return run_dir


def _steps(losses: list[float]) -> list[tuple[str, dict[str, Any]]]:
    return [("step", {"step": i + 1, "loss": loss, "tokens": 100 * (i + 1)}) for i, loss in enumerate(losses)]


def _started(kind: str = "cpu", config: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    return ("run_started", {"device": {"kind": kind}, "max_steps": 3, "config": config or {}})


# -- config diff and change labels -------------------------------------------


def test_config_diff_of_r8_and_r16_names_exactly_the_three_changed_knobs() -> None:
    diff = config_diff([_config("tiny-r8"), _config("tiny-r16")])

    assert diff == [
        ("lora.r", [8, 16]),
        ("lora.lora_alpha", [16.0, 32.0]),
        ("training.learning_rate", [0.002, 0.001]),
    ]  # output_dir and parent differ too, and are ignored


def test_config_diff_keeps_config_order_and_shows_missing_knobs_as_none() -> None:
    base = {"lora": {"r": 8, "target_modules": ["q_proj"]}, "training": {"seed": 1}, "output_dir": "a"}
    other = {"lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}, "training": {}, "extra": {"knob": 3}}

    assert config_diff([base, other]) == [
        ("lora.target_modules", [["q_proj"], ["q_proj", "v_proj"]]),
        ("training.seed", [1, None]),
        ("extra.knob", [None, 3]),
    ]
    assert config_diff([base, base]) == []


def test_change_label_names_each_knob_by_its_last_component_in_compact_numbers() -> None:
    assert (
        change_label(_config("tiny-r8"), _config("tiny-r16"))
        == "r 8 → 16, lora_alpha 16 → 32, learning_rate 2e-3 → 1e-3"
    )
    assert change_label(_config("tiny-r8"), _config("tiny-r8")) == "same config"


def test_change_label_uses_one_number_style_per_knob_and_shortens_lists() -> None:
    assert change_label({"training": {"learning_rate": 0.002}}, {"training": {"learning_rate": 0.03}}) == (
        "learning_rate 2e-3 → 3e-2"
    )  # not "2e-3 → 0.03"
    label = change_label(
        {"lora": {"target_modules": ["q_proj", "v_proj"]}},
        {"lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}},
    )

    assert label == "target_modules q_proj,v_proj → q_proj,k_proj,v_proj,…+4"


def test_change_label_stops_near_seventy_characters_and_counts_the_rest() -> None:
    base = {"training": {f"knob_{i}": i for i in range(12)}}
    other = {"training": {f"knob_{i}": i + 100 for i in range(12)}}

    label = change_label(base, other)

    shown, more = label.rsplit(", +", 1)
    assert len(shown) <= 70
    assert more.endswith(" more")
    assert shown.count("→") + int(more.split()[0]) == 12


# -- outcomes -----------------------------------------------------------------


def _fixture_facts(name: str) -> dict[str, Any]:
    events = read_events(RUNS / name)
    steps = of_type(events, "step")
    return {
        "final": steps[-1]["loss"],
        "min": min(s["loss"] for s in steps),
        "tokens_per_s": (steps[-1]["tokens"] - steps[0]["tokens"]) / (steps[-1]["t"] - steps[0]["t"]),
        "duration": of_type(events, "run_finished")[0]["t"] - events[0]["t"],
        "steps": len(steps),
        "spikes": len(of_type(events, "spike")),
    }


def test_column_names_keep_what_tells_reruns_of_one_config_apart() -> None:
    """Two reruns of one config differ only in their time stamps, at the end of their names."""
    names = ["tiny-cpu-demo-edited-20261105-143012", "tiny-cpu-demo-edited-20261105-143105"]
    labels = column_names(names, 16)
    assert labels == ["tiny-cpu-…143012", "tiny-cpu-…143105"]
    assert all(len(label) <= 16 for label in labels) and len(set(labels)) == 2
    # What differs sits in the middle: both of its ends stay.
    labels = column_names(["tiny-r8-20261105-143012", "tiny-r16-20261105-143012"], 14)
    assert labels == ["r8-2026…143012", "r16-202…143012"]
    # Names that fit stay whole; so does one that fits among longer ones.
    assert column_names(["tiny-r8", "tiny-r16"], 14) == ["tiny-r8", "tiny-r16"]
    assert column_names(["tiny-r8", "tiny-cpu-demo-20261105-143012"], 14)[0] == "tiny-r8"


def test_outcome_rows_match_the_fixture_events() -> None:
    names = ["tiny-r8", "tiny-r16", "tiny-lr-high"]
    rows = dict(outcome_rows([load_compared(RUNS / n) for n in names]))
    facts = [_fixture_facts(n) for n in names]

    assert list(rows) == [
        "final loss", "min loss", "peak VRAM", "tok/s (mean)", "GPU busy", "spikes", "spills", "steps", "duration",
        "status",
    ]  # fmt: skip
    assert rows["final loss"] == [fmt_loss(f["final"]) for f in facts]
    assert rows["min loss"] == [fmt_loss(f["min"]) for f in facts]
    assert rows["tok/s (mean)"] == [f"{f['tokens_per_s']:,.0f}" for f in facts]
    assert rows["duration"] == [fmt_duration(f["duration"]) for f in facts]
    assert rows["spikes"] == ["0", "0", "2"] == [str(f["spikes"]) for f in facts]
    assert rows["steps"] == ["60/60", "60/60", "120/120"]
    assert rows["status"] == ["completed"] * 3
    # CPU runs measured no VRAM and page nothing: never shown as a zero.
    assert rows["peak VRAM"] == ["n/a (CPU)"] * 3
    assert rows["spills"] == ["n/a (CPU)"] * 3


def test_outcome_rows_show_gpu_vram_and_dashes_when_unknown(tmp_path: Path) -> None:
    gpu = _write_run(
        tmp_path / "gpu",
        [
            _started("cuda"),
            ("memory", {"gpus": [{"used": 3 * 1024**3}, {"used": 5 * 1024**3}], "host": {"rss": 1}}),
            *_steps([2.0, 1.5]),
        ],
    )
    bare = _write_run(tmp_path / "bare", _steps([2.0]))  # no run_started: device unknown

    rows = dict(outcome_rows([load_compared(gpu), load_compared(bare)]))

    assert rows["peak VRAM"] == [fmt_bytes(5 * 1024**3), "–"]
    assert rows["spills"] == ["0", "–"]
    assert rows["tok/s (mean)"] == ["100", "–"]  # 100 tokens between the two steps, one second apart


# -- the text report ----------------------------------------------------------


def _spark_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "│" in line and any(b in line for b in BLOCKS)]


def test_format_compare_has_legend_diff_outcomes_and_a_curve_per_run() -> None:
    text = format_compare([load_compared(RUNS / "tiny-r8"), load_compared(RUNS / "tiny-r16")], width=80)

    assert "A  tiny-r8  (base)" in text
    assert "B  tiny-r16  r 8 → 16, lora_alpha 16 → 32, learning_rate 2e-3 → 1e-3" in text
    for knob in ("lora.r", "lora.lora_alpha", "training.learning_rate"):
        assert knob in text
    assert "training.max_steps" not in text and "output_dir" not in text
    assert "n/a (CPU)" in text
    curves = _spark_lines(text)
    assert len(curves) == 2
    assert all(len(line) <= 80 for line in text.splitlines() if "│" in line)


def test_format_compare_notes_spike_steps() -> None:
    text = format_compare([load_compared(RUNS / "tiny-r8"), load_compared(RUNS / "tiny-lr-high")], width=80)

    spike_steps = [s["step"] for s in of_type(read_events(RUNS / "tiny-lr-high"), "spike")]
    assert f"spikes at {', '.join(map(str, spike_steps))}" in text
    assert "spikes at 65, 68" in text
    assert len(_spark_lines(text)) == 2


def test_sparklines_share_one_y_scale_and_downsample_to_the_width(tmp_path: Path) -> None:
    low = load_compared(_write_run(tmp_path / "low", _steps([1.0] * 200)))
    high = load_compared(_write_run(tmp_path / "high", _steps([2.0] * 200)))

    curves = sparklines([low, high], columns=50)

    assert curves is not None
    assert curves.lines == [BLOCKS[0] * 50, BLOCKS[-1] * 50]  # per-run scales would draw both mid-height
    assert (curves.y_lo, curves.y_hi) == (1.0, 2.0)


def test_sparklines_share_the_x_axis_and_mark_nan_columns(tmp_path: Path) -> None:
    long = load_compared(_write_run(tmp_path / "long", _steps([3.0, 2.0, 1.0, 1.0])))
    short = load_compared(_write_run(tmp_path / "short", _steps([3.0, math.nan])))

    curves = sparklines([long, short], columns=80)

    assert curves is not None
    assert curves.lines == [BLOCKS[-1] + BLOCKS[4] + BLOCKS[0] * 2, BLOCKS[-1] + "×"]  # 2.0 is 3.5/7 up: ▅


# -- the CLI ------------------------------------------------------------------


def test_cli_compare_no_tui_prints_the_report(
    runs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")

    code = cli.main(["compare", "tiny-r8", "tiny-r16", "--runs-dir", str(runs), "--no-tui"])

    out = capsys.readouterr().out
    assert code == 0
    assert "lora.r" in out and "training.learning_rate" in out and "tiny-r16" in out
    assert len(_spark_lines(out)) == 2


def test_cli_compare_opens_the_compare_screen_with_the_resolved_runs(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Any] = []
    monkeypatch.setattr(cli, "_compare_dashboard", lambda *args: opened.append(args) or 0)

    code = cli.main(["compare", "tiny-r8", str(runs / "tiny-lr-high"), "--runs-dir", str(runs), "--x", "tokens"])

    assert code == 0
    assert opened == [([runs / "tiny-r8", runs / "tiny-lr-high"], "tokens", runs)]


@pytest.mark.parametrize(
    ("given", "pair", "why"),
    [
        ([], ("tiny-r8", "tiny-lr-high"), "comparing tiny-lr-high with its parent, tiny-r8"),
        (["tiny-r16"], ("tiny-r8", "tiny-r16"), "comparing tiny-r16 with its parent, tiny-r8"),
    ],
)
def test_cli_compare_with_one_run_or_none_takes_the_run_and_its_parent(
    runs: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    given: list[str],
    pair: Any,
    why: str,
) -> None:
    """``loratop compare`` alone compares the latest run with what it was tweaked from, as
    ``attach`` and ``export`` default to the latest run."""
    opened: list[Any] = []
    monkeypatch.setattr(cli, "_compare_dashboard", lambda *args: opened.append(args) or 0)

    code = cli.main(["compare", *given, "--runs-dir", str(runs)])

    assert code == 0
    assert [path.name for path in opened[0][0]] == list(pair)
    assert capsys.readouterr().err.splitlines() == [why]


def test_cli_compare_without_a_parent_takes_the_run_started_before(tmp_path: Path, runs: Path) -> None:
    for name in ("tiny-r8", "tiny-lr-high"):
        shutil.copytree(runs / name, tmp_path / name)
    (tmp_path / "tiny-lr-high" / "config.yaml").write_text(
        (tmp_path / "tiny-lr-high" / "config.yaml").read_text().replace("parent: /tmp/fx/tiny-r8", "parent: null")
    )
    assert cli._default_pair("tiny-lr-high", tmp_path) == (tmp_path / "tiny-r8", tmp_path / "tiny-lr-high")


def test_cli_compare_of_the_first_run_alone_says_name_two(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["compare", "tiny-r8", "--runs-dir", str(runs), "--no-tui"])

    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "loratop: tiny-r8 has no parent run and no run before it to compare with; name two runs"
    ]


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ("nope", "loratop: no run 'nope': not a folder with events.jsonl, nor a run under {runs}/"),
        ("tiny-r8", "loratop: 'tiny-r8' is given twice; compare needs different runs"),
        ("{runs}/tiny-r8", "loratop: 'tiny-r8' and '{runs}/tiny-r8' are the same run; compare needs different runs"),
    ],
)
def test_cli_compare_errors_are_one_line(
    runs: Path, capsys: pytest.CaptureFixture[str], second: str, message: str
) -> None:
    code = cli.main(["compare", "tiny-r8", second.format(runs=runs), "--runs-dir", str(runs), "--no-tui"])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.splitlines() == [message.format(runs=runs)]
    assert captured.out == ""


# -- issue 26, item 12: labels that say what they are; a saved screen named by its runs ----------


def test_a_running_runs_loss_is_its_loss_now_and_tokens_per_s_says_it_is_the_mean(runs: Path) -> None:
    import json

    from tests.conftest import copy_run, live_status

    live = copy_run(runs, "tiny-r16", "tiny-live")
    lines = (live / "events.jsonl").read_bytes().splitlines(keepends=True)
    (live / "events.jsonl").write_bytes(b"".join(lines[:40]))  # still training: its events so far
    (live / "status.json").write_text(json.dumps(live_status(state="running")))
    live_loss = of_type(read_events(live), "step")[-1]["loss"]

    rows = dict(outcome_rows([load_compared(runs / "tiny-r8"), load_compared(live)]))
    finished = dict(outcome_rows([load_compared(runs / "tiny-r8"), load_compared(runs / "tiny-r16")]))

    assert "final loss" not in rows and rows["loss"] == [
        fmt_loss(_fixture_facts("tiny-r8")["final"]),
        f"{live_loss:.4f} now",
    ]
    assert finished["final loss"] == [fmt_loss(_fixture_facts(n)["final"]) for n in ("tiny-r8", "tiny-r16")]
    assert "tokens/s" not in rows and rows["tok/s (mean)"][0] == f"{_fixture_facts('tiny-r8')['tokens_per_s']:,.0f}"
    text = format_compare([load_compared(runs / "tiny-r8"), load_compared(live)], width=80)
    assert f"{live_loss:.4f} now" in text and "tok/s (mean)" in text and "final loss" not in text


def test_the_file_stem_names_the_runs_safely_and_briefly() -> None:
    from loratop.tui.models.compare import file_stem

    assert file_stem(["tiny-r8", "tiny-r16"]) == "compare-tiny-r8-vs-tiny-r16"
    assert file_stem(["a/b c\x1b[2J", "..hidden"]) == "compare-a_b_c__2J-vs-hidden"
    stamps = ["tiny-cpu-demo-edited-20261105-143012", "tiny-cpu-demo-edited-20261105-143105"] * 6
    stem = file_stem(stamps)
    assert len(stem) <= 120 and "143012" in stem and "143105" in stem and stem.endswith("-more")
    assert len(file_stem(["x" * 400])) <= 120


def test_p_on_the_compare_screen_saves_a_file_named_by_the_runs_never_over_another(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from loratop.tui.app import LoratopApp

    monkeypatch.chdir(tmp_path)
    app = LoratopApp(None, compare=[runs / "tiny-r8", runs / "tiny-r16"])

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: bool(getattr(app.screen, "runs", None)), 10, "the runs, folded")
            await pilot.press("p")
            await pilot.pause()
            (tmp_path / "loratop-exports" / "compare-tiny-r8-vs-tiny-r16.svg").write_text("the first, kept")
            await pilot.press("p")
            await pilot.pause()

    asyncio.run(drive())
    saved = sorted(p.name for p in (tmp_path / "loratop-exports").iterdir())
    assert saved == ["compare-tiny-r8-vs-tiny-r16-2.svg", "compare-tiny-r8-vs-tiny-r16.svg"]
    assert (tmp_path / "loratop-exports" / "compare-tiny-r8-vs-tiny-r16.svg").read_text() == "the first, kept"
    assert "<svg" in (tmp_path / "loratop-exports" / "compare-tiny-r8-vs-tiny-r16-2.svg").read_text()


def test_the_compare_screen_folds_its_runs_off_the_ui_thread(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 27, item 3: opening compare on long runs never freezes the screen: the folds run
    on a worker, and the screen says it is reading them until they are drawn."""
    import asyncio
    import threading

    from loratop.tui.app import LoratopApp
    from loratop.tui.models import compare

    where: list[bool] = []
    real = compare.load_compared

    def watched(run_dir: Path) -> Any:
        where.append(threading.current_thread() is threading.main_thread())
        return real(run_dir)

    monkeypatch.setattr(compare, "load_compared", watched)
    app = LoratopApp(None, compare=[runs / "tiny-r8", runs / "tiny-r16"])

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: "tiny-r16: r 8 → 16" in screen_text(app), 10, "the legend")

    from tests.conftest import screen_text

    asyncio.run(drive())
    assert where == [False, False]
