"""A well-formed line whose known field has the wrong type is garbled: skipped and counted,
never raised into ``ls``, ``compare``, ``export``, ``attach`` or the home screen (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loratop.cli import main as cli
from loratop.core import events as ev
from tests.conftest import RECORDED_RUNS

# The line from the issue: it crashed `loratop attach`, the home screen, `ls` and `compare`.
BAD_STEP = b'{"v":1,"seq":254,"t":1795939130,"type":"step","step":"abc","loss":1.0}\n'


def _line(kind: str, **fields: Any) -> bytes:
    return (json.dumps({"v": 1, "seq": 5, "t": 1.0, "type": kind, **fields}) + "\n").encode()


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        (ev.STEP, {"step": "abc", "loss": 1.0}),
        (ev.STEP, {"step": 3, "loss": "low"}),
        (ev.STEP, {"step": True}),  # a bool is not a step number
        (ev.MEMORY, {"gpus": "none"}),
        (ev.MEMORY, {"gpus": [{"index": 0, "used": "12 GiB"}]}),
        (ev.MEMORY, {"host": {"rss": [1]}}),
        (ev.RUN_STARTED, {"params": {"trainable": "many"}}),
        (ev.RUN_STARTED, {"config": "r=8"}),
        (ev.SPILL, {"step": 3, "bytes": "1 MiB"}),
        (ev.OOM_RISK, {"level": 2}),
        (ev.SPIKE, {"step": 4, "score": {}}),
        (ev.CHECKPOINT, {"step": 4, "path": 7}),
        (ev.RUN_FINISHED, {"status": 0}),
        (ev.LOG, {"message": ["a"]}),
        (ev.PAGED_STATE, {"paged_bytes": 1.5}),
    ],
)
def test_a_wrong_typed_known_field_makes_the_line_garbled(kind: str, fields: dict[str, Any]) -> None:
    assert ev.decode_line(_line(kind, **fields)) is None
    decoder = ev.Decoder()
    assert decoder.feed(_line(kind, **fields) + _line(ev.LOG, message="next")) == [
        {"v": 1, "seq": 5, "t": 1.0, "type": ev.LOG, "message": "next"}
    ]
    assert decoder.skipped == 1


def test_right_types_unknown_fields_and_non_finite_floats_pass() -> None:
    event = ev.decode_line(_line(ev.STEP, step=3, loss="NaN", lr=2, grad_norm=None, brand_new_field={"x": 1}))
    assert event is not None and event["lr"] == 2 and event["brand_new_field"] == {"x": 1}
    assert event["loss"] != event["loss"]  # NaN
    memory = {"host": {"rss": 1}, "gpu_state": "ok", "gpus": [{"index": 0, "used": 1, "torch": {"reserved": 2}}]}
    assert ev.decode_line(_line(ev.MEMORY, **memory)) is not None


def test_every_event_type_has_its_payload_defined_once() -> None:
    assert set(ev.PAYLOADS) == ev.EVENT_TYPES


def _runs_with_bad_line(tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(RECORDED_RUNS, root)
    for name in ("tiny-r8", "tiny-r16"):
        with open(root / name / "events.jsonl", "ab") as fh:
            fh.write(BAD_STEP)
    return root


def test_ls_compare_and_export_skip_the_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _runs_with_bad_line(tmp_path)
    assert cli.main(["ls", "--runs-dir", str(runs)]) == 0
    listing = capsys.readouterr().out
    assert "tiny-r8" in listing and "tiny-r16" in listing and "tiny-lr-high" in listing
    code = cli.main(["compare", "--no-tui", "--runs-dir", str(runs), "tiny-r8", "tiny-r16"])
    assert code == 0, capsys.readouterr().err
    assert "lora.r" in capsys.readouterr().out
    out = tmp_path / "export"
    assert cli.main(["export", "--runs-dir", str(runs), "tiny-r8", "-o", str(out)]) == 0
    exported = [json.loads(line) for line in next(out.glob("*.jsonl")).read_text().splitlines()]
    assert not any(e.get("step") == "abc" for e in exported)


def test_the_run_summary_counts_the_bad_line_as_garbled(tmp_path: Path) -> None:
    from loratop.core.runs import read_run

    runs = _runs_with_bad_line(tmp_path)
    clean, _ = read_run(RECORDED_RUNS / "tiny-r8")
    state, summary = read_run(runs / "tiny-r8")
    assert (clean.garbage, state.garbage) == (0, 1)
    assert list(state.steps) == list(clean.steps) and summary.step == clean.last_step  # "abc" is not a step


def test_a_non_finite_float_inside_a_nested_row_survives_and_reads_as_a_float() -> None:
    """``jsonable`` writes NaN/Infinity as strings at any depth; the decoder must read them
    back there too, not drop the whole memory sample as garbled."""
    line = ev.encode(
        7,
        ev.MEMORY,
        {
            "host": {"rss": 1},
            "gpu_state": "ok",
            "gpus": [{"index": 0, "used": 1, "power_w": float("nan"), "temp_c": float("inf")}],
        },
        t=1.0,
    )
    event = ev.decode_line(line)
    assert event is not None
    gpu = event["gpus"][0]
    assert isinstance(gpu["power_w"], float) and gpu["power_w"] != gpu["power_w"]
    assert gpu["temp_c"] == float("inf")
    started = ev.decode_line(ev.encode(8, ev.RUN_STARTED, {"params": {"fraction": float("nan")}}, t=1.0))
    assert started is not None and started["params"]["fraction"] != started["params"]["fraction"]
