"""Acceptance: a malformed config gives exit 2 and one line naming the bad field; never a traceback.

Each case runs ``loratop check`` as a real subprocess (about 0.2 s each) in a fresh
folder, so relative data paths and the default output folder resolve there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loratop.cli.main import main
from loratop.preflight import data_files
from loratop.preflight.config import load_config, parse_overrides

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "sample_configs" / "tiny-cpu-demo.yaml"

MISSING = None
"""Stands in for the YAML text of a config file that does not exist."""

# (id, YAML text or MISSING, extra CLI args, {relative path: bytes} to create, field path, expected words)
CASES: list[tuple[str, str | None, list[str], dict[str, bytes], str, str]] = [
    (
        "unknown-top-level-key",
        "trainig:\n  max_steps: 3\n",
        [],
        {},
        "trainig",
        "did you mean 'training'?",
    ),
    ("unknown-nested-key", "lora:\n  rank: 8\n", [], {}, "lora.rank", "did you mean 'r'?"),
    ("wrong-type", "lora:\n  r: eight\n", [], {}, "lora.r = 'eight'", "must be a valid integer"),
    ("r-zero", "lora:\n  r: 0\n", [], {}, "lora.r = 0", "greater than 0"),
    ("r-negative-set", "", ["--set", "lora.r=-1"], {}, "--set lora.r: lora.r = -1", "greater than 0"),
    ("dropout-one", "lora:\n  lora_dropout: 1.0\n", [], {}, "lora.lora_dropout = 1.0", "less than 1"),
    (
        "dropout-negative",
        "lora:\n  lora_dropout: -0.1\n",
        [],
        {},
        "lora.lora_dropout = -0.1",
        "greater than or equal to 0",
    ),
    ("lr-zero", "training:\n  learning_rate: 0\n", [], {}, "training.learning_rate = 0", "greater than 0"),
    (
        "lr-not-a-number",
        "training:\n  learning_rate: fast\n",
        [],
        {},
        "training.learning_rate = 'fast'",
        "must be a valid number",
    ),
    (
        "unknown-optimizer",
        "training:\n  optim: paged_adamw8bit\n",
        [],
        {},
        "training.optim = 'paged_adamw8bit'",
        "did you mean 'paged_adamw_8bit'?",
    ),
    (
        "unknown-scheduler",
        "training:\n  lr_scheduler_type: exponential\n",
        [],
        {},
        "training.lr_scheduler_type = 'exponential'",
        "accepted: linear, cosine",
    ),
    (
        "unknown-target-module",
        "lora:\n  target_modules: [q_prj, v_proj]\n",
        [],
        {},
        "lora.target_modules",
        "'q_prj' is not a module of a llama model; not one of the accepted values (did you mean 'q_proj'?)",
    ),
    (
        "target-modules-not-a-list",
        "lora:\n  target_modules: q_proj\n",
        [],
        {},
        "lora.target_modules = 'q_proj'",
        "must be a valid list",
    ),
    (
        "quant-type",
        "quantization:\n  bnb_4bit_quant_type: nf8\n",
        [],
        {},
        "quantization.bnb_4bit_quant_type = 'nf8'",
        "'nf4' or 'fp4'",
    ),
    (
        "compute-dtype",
        "quantization:\n  bnb_4bit_compute_dtype: bf16\n",
        [],
        {},
        "quantization.bnb_4bit_compute_dtype = 'bf16'",
        "'bfloat16', 'float16' or 'float32'",
    ),
    (
        "batch-size-zero",
        "training:\n  per_device_train_batch_size: 0\n",
        [],
        {},
        "training.per_device_train_batch_size = 0",
        "greater than or equal to 1",
    ),
    (
        "memory-sample-hz-zero",
        "monitor:\n  memory_sample_hz: 0\n",
        [],
        {},
        "monitor.memory_sample_hz = 0",
        "greater than 0",
    ),
    (
        "data-file-missing",
        "data:\n  path: missing.jsonl\n",
        [],
        {},
        "data.path = 'missing.jsonl'",
        "file not found",
    ),
    (
        "data-file-empty",
        "data:\n  path: empty.jsonl\n",
        [],
        {"empty.jsonl": b"\n\n"},
        "data.path = 'empty.jsonl'",
        "the dataset is empty (no rows)",
    ),
    (
        "data-line-broken",
        "data:\n  path: broken.jsonl\n",
        [],
        {"broken.jsonl": b'{"text": "fine"}\n{"text": \n{"text": "fine"}\n'},
        "data.path = 'broken.jsonl'",
        "line 2 is not valid JSON",
    ),
    (
        "data-line-bad-utf8",
        "data:\n  path: latin1.jsonl\n",
        [],
        {"latin1.jsonl": b'{"text": "caf\xe9"}\n'},
        "data.path = 'latin1.jsonl'",
        "line 1 is not valid UTF-8",
    ),
    (
        "data-rows-fit-no-format",
        "data:\n  path: odd.jsonl\n",
        [],
        {"odd.jsonl": b'{"question": "q", "answer": "a"}\n'},
        "data.path = 'odd.jsonl'",
        "cannot tell the format of row 1",
    ),
    (
        "data-row-wrong-format",
        "data:\n  path: mixed.jsonl\n  format: messages\n",
        [],
        {"mixed.jsonl": b'{"messages": [{"role": "user", "content": "hi"}]}\n{"text": "plain"}\n'},
        "data.path = 'mixed.jsonl'",
        "row 2 does not fit data.format 'messages'",
    ),
    (
        "data-path-is-folder",
        "data:\n  path: somefolder\n",
        [],
        {"somefolder/readme.md": b"x"},
        "data.path = 'somefolder'",
        "is a folder; expected a .jsonl, .json, .parquet file",
    ),
    (
        "data-file-type",
        "data:\n  path: rows.csv\n",
        [],
        {"rows.csv": b"text\nhello\n"},
        "data.path = 'rows.csv'",
        "unsupported file type '.csv'; accepted: .jsonl, .json, .parquet",
    ),
    (
        "model-folder-missing",
        "model:\n  name_or_path: ./no-such-model\n",
        [],
        {},
        "model.name_or_path = './no-such-model'",
        "no config.json there",
    ),
    (
        "malformed-yaml",
        "lora:\n  r: 8\n   lora_alpha: 16\n",
        [],
        {},
        "config.yaml:3:14",
        "malformed YAML",
    ),
    ("top-level-list", "- lora\n- training\n", [], {}, "config.yaml", "must be a YAML mapping of sections"),
    ("section-scalar", "lora: 8\n", [], {}, "lora = 8", "must be a mapping of keys to values"),
    ("config-missing", MISSING, [], {}, "config.yaml", "config file not found"),
    ("set-without-equals", "", ["--set", "lora.r8"], {}, "--set lora.r8", "expected section.key=value"),
    ("set-into-a-value", "lora:\n  r: 8\n", ["--set", "lora.r.x=1"], {}, "--set lora.r.x", "r is not a section"),
    (
        "output-dir-holds-run",
        "output_dir: old-run\n",
        [],
        {"old-run/events.jsonl": b""},
        "output_dir = 'old-run'",
        "already holds a run",
    ),
]


def _check(tmp_path: Path, yaml_text: str | None, args: list[str]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    if yaml_text is not MISSING:
        config.write_text(yaml_text)
    return subprocess.run(
        [sys.executable, "-m", "loratop.cli.main", "check", str(config), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _problem_lines(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    assert lines, "no output on stderr"
    assert lines[-1].startswith("loratop: "), lines[-1]
    return lines[:-1]


@pytest.mark.parametrize(
    ("yaml_text", "args", "files", "field", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_config_gives_one_line_and_exit_2(
    tmp_path: Path, yaml_text: str | None, args: list[str], files: dict[str, bytes], field: str, words: str
) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)

    result = _check(tmp_path, yaml_text, args)

    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    problems = _problem_lines(result.stderr)
    assert len(problems) == 1, problems
    assert field in problems[0]
    assert words in problems[0]
    assert result.stderr.splitlines()[-1] == "loratop: 1 problem in the config; nothing was launched"


def test_acceptance_table_has_at_least_15_cases() -> None:
    assert len(CASES) >= 15
    assert len({c[0] for c in CASES}) == len(CASES)


def test_two_problems_give_two_lines(tmp_path: Path) -> None:
    result = _check(tmp_path, "lora:\n  r: 0\ntraining:\n  optim: adam\n", [])

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    problems = _problem_lines(result.stderr)
    assert len(problems) == 2, problems
    assert "lora.r = 0" in problems[0]
    assert "training.optim = 'adam'" in problems[1]
    assert result.stderr.splitlines()[-1].startswith("loratop: 2 problems")


def test_shipped_demo_checks_ok(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loratop.cli.main", "check", str(DEMO)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")
    assert not (tmp_path / "runs").exists(), "check must not create the run folder"


def test_unreadable_data_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Tests often run as root, where chmod 000 still reads; fail the open instead.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "locked.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "config.yaml").write_text("data:\n  path: locked.jsonl\n")
    real_open = Path.open

    def refuse_locked(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "locked.jsonl":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(data_files.Path, "open", refuse_locked)

    assert main(["check", "config.yaml"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    problems = _problem_lines(err)
    assert problems == ["config.yaml: data.path = 'locked.jsonl': cannot read: Permission denied"]


def test_yaml_float_without_dot_is_a_number(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 2e-4 as the string '2e-4'.
    config_file = tmp_path / "config.yaml"
    config_file.write_text("training:\n  learning_rate: 2e-4\n")

    config = load_config(config_file, check_files=False)

    assert isinstance(config.training.learning_rate, float)
    assert config.training.learning_rate == pytest.approx(0.0002)


def test_set_learning_rate_without_dot_is_a_number() -> None:
    config = load_config(None, parse_overrides(["training.learning_rate=2e-4"]), check_files=False)

    assert config.training.learning_rate == pytest.approx(0.0002)


def test_set_target_modules_gives_a_list() -> None:
    config = load_config(None, parse_overrides(["lora.target_modules=[q_proj,v_proj]"]), check_files=False)

    assert config.lora.target_modules == ["q_proj", "v_proj"]


# -- a CONFIG that is not there: every command says so the same way ------------------------------


def _samples() -> list[str]:
    return sorted(p.stem for p in (REPO / "sample_configs").glob("*.yaml"))


@pytest.mark.parametrize("command", ["run", "check", "estimate", "fit", "edit"])
def test_a_missing_config_lists_the_samples_and_suggests_the_closest(tmp_path: Path, command: str) -> None:
    extra = ["--no-tui"] if command == "run" else ["--runs-dir", str(tmp_path / "runs")] if command == "edit" else []

    result = subprocess.run(
        [sys.executable, "-m", "loratop.cli.main", command, "tiny-cpu-dem", *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2 and "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert "tiny-cpu-dem: config file not found" in first
    assert f"a shipped sample: {', '.join(_samples())}" in first
    assert first.endswith("did you mean 'tiny-cpu-demo'?")
    assert not (tmp_path / "runs").exists(), "nothing was launched"


def test_a_mistyped_config_path_suggests_the_file_beside_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "my_run.yaml").write_text("lora:\n  r: 8\n")

    assert main(["check", str(tmp_path / "configs" / "my-run.yml")]) == 2

    line = capsys.readouterr().err.splitlines()[0]
    assert "my-run.yml: config file not found" in line
    assert line.endswith(f"did you mean '{tmp_path / 'configs' / 'my_run.yaml'}'?")


def test_demo_resolves_its_config_the_same_way(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from loratop.preflight import samples

    monkeypatch.setattr(samples, "DEMO", "tiny-cpu-dem")  # as if the sample were missing from the install

    assert main(["demo", "--no-tui"]) == 2

    assert capsys.readouterr().err.splitlines()[0].endswith("did you mean 'tiny-cpu-demo'?")
