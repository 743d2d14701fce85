"""A GPU-sized sample on a box that cannot run it (issue 16, item 1; issue 26, item 4).

``run`` refuses, in one line and in seconds, a hub model or a hub dataset that is neither
local nor cached when the hub cannot be reached; ``check`` says so, and says what a GPU-sized
model would cost on this CPU; a load reports what it is doing as phase messages.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loratop.preflight.config import load_config, parse_overrides
from loratop.preflight.cpu_estimate import cpu_epoch_hours, cpu_training_warning, cpu_trial, parameters_from_name
from loratop.preflight.data_files import unavailable_dataset
from loratop.preflight.model_config import unavailable_model
from loratop.preflight.samples import resolve_config_path
from loratop.trainer.load_progress import describe, progress_class, reporting_load_progress

QWEN = "Qwen/Qwen2.5-7B-Instruct"


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def offline_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Empty Hugging Face caches (models and datasets) and a hub endpoint that refuses connections."""
    env = {
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
    }
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _fake_snapshot(cache: Path, repo_id: str, weights: bool) -> Path:
    """A hub cache entry laid out as huggingface_hub lays it out."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    if weights:
        (snapshot / "model.safetensors").write_bytes(b"\0" * 16)
    return snapshot


def test_a_hub_model_the_box_cannot_reach_is_refused_with_the_way_out(offline_box: dict[str, str]) -> None:
    why = unavailable_model(QWEN)
    assert why is not None
    assert "not in the Hugging Face cache" in why and "hub is unreachable" in why
    assert f"hf download {QWEN}" in why and "hf auth login" in why and "local folder" in why


def test_hf_hub_offline_is_said_without_trying_the_network(
    offline_box: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    why = unavailable_model(QWEN)
    assert why is not None and "HF_HUB_OFFLINE is set" in why


def test_cached_weights_or_a_local_folder_with_weights_are_fine(offline_box: dict[str, str], tmp_path: Path) -> None:
    cache = Path(offline_box["HF_HUB_CACHE"])
    _fake_snapshot(cache, QWEN, weights=True)
    assert unavailable_model(QWEN) is None
    assert unavailable_model("tiny") is None
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert "has no weights" in (unavailable_model(str(folder)) or "")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"\0")
    assert unavailable_model(str(folder)) is None
    assert "no such folder" in (unavailable_model(str(tmp_path / "missing")) or "")


def test_a_cached_config_without_weights_is_not_enough(offline_box: dict[str, str]) -> None:
    _fake_snapshot(Path(offline_box["HF_HUB_CACHE"]), QWEN, weights=False)  # what `loratop estimate` fetches
    assert "hub is unreachable" in (unavailable_model(QWEN) or "")


def _loratop(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loratop.cli.main", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_refuses_in_one_line_and_creates_nothing(offline_box: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    sets = ["--set", "output_dir=runs/q", "--set", "data.path=embedded:tool-chat"]  # the model alone is missing
    result = _loratop("run", "qwen2.5-7b-qlora", "--no-tui", *sets, cwd=work, env=offline_box)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"loratop: model.name_or_path = {QWEN}: ") and "hub is unreachable" in lines[0]
    assert result.stdout == ""
    assert not (work / "runs").exists(), "a refused launch leaves no run folder"


ULTRACHAT = "HuggingFaceH4/ultrachat_200k"
"""The hub dataset of the GPU samples."""


def test_run_refuses_a_hub_dataset_it_cannot_reach_in_one_line_before_any_load(
    offline_box: dict[str, str], tmp_path: Path
) -> None:
    # The command: the tiny model is local, the sample's dataset is on the hub.
    work = tmp_path / "work"
    work.mkdir()
    sets = ["--set", "model.name_or_path=tiny", "--set", "output_dir=runs/q"]
    result = _loratop("run", "qwen2.5-7b-qlora", "--no-tui", *sets, cwd=work, env=offline_box)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    line = lines[0]
    assert line.startswith(f"loratop: data.path = {ULTRACHAT}: not a local file and not in the Hugging Face datasets "
                           f"cache ({offline_box['HF_DATASETS_CACHE']}), and the hub is unreachable (")  # fmt: skip
    assert f"load_dataset('{ULTRACHAT}', split='train_sft').to_json('ultrachat_200k.jsonl')" in line
    assert "data.path: embedded:tool-chat" in line
    assert result.stdout == "", "refused before the pre-flight line: nothing was loaded"
    assert not (work / "runs").exists(), "a refused launch leaves no run folder"


def test_run_says_every_input_it_cannot_fetch_one_line_each(offline_box: dict[str, str], tmp_path: Path) -> None:
    sets = ["--set", "output_dir=runs/q"]
    result = _loratop("run", "qwen2.5-7b-qlora", "--no-tui", *sets, cwd=tmp_path, env=offline_box)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert [line.split(" = ")[0] for line in lines] == ["loratop: model.name_or_path", "loratop: data.path"], lines
    assert all("hub is unreachable" in line for line in lines)
    assert not (tmp_path / "runs").exists()


def test_a_launch_from_the_dashboard_refuses_it_too(offline_box: dict[str, str], tmp_path: Path) -> None:
    from loratop.preflight.launcher import DataUnavailable, launch

    config = load_config(
        resolve_config_path("qwen2.5-7b-qlora"),
        parse_overrides(["model.name_or_path=tiny", f"output_dir={tmp_path / 'runs' / 'q'}"]),
        check_files=False,
    )
    with pytest.raises(DataUnavailable, match=f"^data.path = {ULTRACHAT}: .*hub is unreachable"):
        launch(config)
    assert not (tmp_path / "runs").exists()


def _cache_dataset(cache: Path, dataset_id: str) -> Path:
    """A dataset prepared by ``datasets``, laid out as it lays it out (namespace___snake_name/config/version/hash)."""
    namespace, name = dataset_id.split("/")
    prepared = cache / f"{namespace}___{name}" / "default" / "0.0.0" / "0123abcd"
    prepared.mkdir(parents=True)
    (prepared / "dataset_info.json").write_text("{}")
    return prepared


def test_a_hub_dataset_is_fine_when_cached_local_or_the_hub_answers(
    offline_box: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from loratop.preflight import model_config

    assert "hub is unreachable" in (unavailable_dataset(ULTRACHAT, "train_sft") or "")
    assert unavailable_dataset(ULTRACHAT, probe=False) is None  # a check does not try the network
    _cache_dataset(Path(offline_box["HF_DATASETS_CACHE"]), ULTRACHAT)
    assert unavailable_dataset(ULTRACHAT) is None  # `datasets` loads it from its cache offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert unavailable_dataset(ULTRACHAT) is None
    assert unavailable_dataset("embedded:tool-chat") is None
    (tmp_path / "rows.jsonl").write_text('{"text": "a"}\n')
    assert unavailable_dataset(str(tmp_path / "rows.jsonl")) is None
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(model_config.socket, "create_connection", lambda *a, **k: socket.socket())  # it answers
    assert unavailable_dataset("someorg/not-cached") is None


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_an_offline_variable_is_said_without_trying_the_network(
    offline_box: dict[str, str], monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    from loratop.preflight import model_config

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("offline: the hub is not tried")

    monkeypatch.setattr(model_config.socket, "create_connection", no_network)
    monkeypatch.setenv(variable, "1")
    assert f"and {variable} is set: " in (unavailable_dataset(ULTRACHAT) or "")


def test_hf_datasets_offline_decides_for_datasets_when_set(
    offline_box: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # datasets reads this first: it goes online
    why = unavailable_dataset(ULTRACHAT) or ""
    assert "hub is unreachable" in why and "is set" not in why


def test_check_warns_about_the_hub_dataset_as_about_the_model(
    offline_box: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from loratop.cli.main import main
    from loratop.preflight import model_config

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a check must not touch the network")

    monkeypatch.setattr(model_config.socket, "create_connection", no_network)
    sets = ["--set", "model.name_or_path=tiny", "--set", f"output_dir={tmp_path / 'out'}"]
    assert main(["check", "qwen2.5-7b-qlora", *sets]) == 0
    out = capsys.readouterr().out
    assert f"warning: data.path = {ULTRACHAT}: not a local file and not in the Hugging Face datasets cache" in out
    assert "`loratop run` fetches it from the hub, and refuses it at once when the hub does not answer" in out

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["check", "qwen2.5-7b-qlora", *sets]) == 0
    out = capsys.readouterr().out
    assert f"warning: data.path = {ULTRACHAT}: " in out and "HF_HUB_OFFLINE is set" in out
    assert "(`loratop run` refuses it)" in out


def test_check_warns_that_run_would_refuse_the_model(offline_box: dict[str, str], tmp_path: Path) -> None:
    result = _loratop("check", "qwen2.5-7b-qlora", cwd=tmp_path, env={**offline_box, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "HF_HUB_OFFLINE is set" in result.stdout and "`loratop run` refuses it" in result.stdout


def test_check_says_the_run_must_download_the_model_without_trying_the_hub(
    offline_box: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from loratop.cli.main import main
    from loratop.preflight import model_config

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a check must not touch the network")

    monkeypatch.setattr(model_config.socket, "create_connection", no_network)
    assert main(["check", "qwen2.5-7b-qlora", "--set", f"output_dir={tmp_path / 'out'}"]) == 0
    out = capsys.readouterr().out
    assert f"model.name_or_path = {QWEN}: not a local folder and not in the Hugging Face cache" in out
    assert "downloads it from the hub first" in out


def _qwen_config(tmp_path: Path, *overrides: str) -> object:
    path = resolve_config_path("qwen2.5-7b-qlora")
    sets = ["data.path=embedded:tool-chat", f"output_dir={tmp_path / 'out'}", *overrides]
    return load_config(path, parse_overrides(sets), check_files=False)


def test_a_gpu_sized_model_on_a_cpu_gets_hours_per_epoch(tmp_path: Path) -> None:
    config = _qwen_config(tmp_path)
    warning = cpu_training_warning(config, has_gpu=False)  # type: ignore[arg-type]
    assert warning is not None
    assert "no NVIDIA GPU here" in warning and "one epoch would take at least" in warning
    assert "estimated" in warning and "GFLOP/s" in warning and "tiny" in warning
    assert cpu_training_warning(config, has_gpu=True) is None  # type: ignore[arg-type]


def test_the_cpu_trial_hint_names_the_data_knob_and_taking_it_draws_no_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from loratop.cli.main import main

    path = resolve_config_path("qwen2.5-7b-qlora")
    config = load_config(path, parse_overrides([f"output_dir={tmp_path / 'out'}"]), check_files=False)
    warning = cpu_training_warning(config, has_gpu=False)  # the sample's data: a hub dataset; lr 2e-4
    assert warning is not None
    hint = "--set model.name_or_path=tiny --set data.path=embedded:tool-chat --set training.learning_rate=2e-3"
    assert warning.endswith(f"use a GPU box, or for a CPU trial: {hint}"), warning
    local = _qwen_config(tmp_path, "training.learning_rate=2e-3")  # data.path: embedded:tool-chat already
    assert cpu_trial(local) == "--set model.name_or_path=tiny"  # type: ignore[arg-type]

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the trial needs no hub
    sets = [*hint.replace("--set ", "").split(" "), f"output_dir={tmp_path / 'trial'}"]
    assert main(["check", "qwen2.5-7b-qlora", *(arg for knob in sets for arg in ("--set", knob))]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("warning:")] == [], out


def test_the_tiny_model_on_a_cpu_gets_no_such_warning(tmp_path: Path) -> None:
    config = _qwen_config(tmp_path, "model.name_or_path=tiny")
    assert cpu_training_warning(config, has_gpu=False) is None  # type: ignore[arg-type]


def test_cpu_hours_follow_the_arithmetic(tmp_path: Path) -> None:
    config = _qwen_config(tmp_path, "training.gradient_checkpointing=false", "training.max_seq_length=1024")
    low, high = cpu_epoch_hours(config, parameters=1_000_000_000, flops=1e11, rows=3600)  # type: ignore[arg-type]
    # 3600 rows × 128 tokens × 4 FLOP × 1e9 parameters / 1e11 FLOP/s = 18,432 s
    assert low == pytest.approx(18_432 / 3600)
    assert high == pytest.approx(low * 1024 / 128)


@pytest.mark.parametrize(
    ("name", "count"),
    [(QWEN, 7e9), ("meta-llama/Llama-3.1-8B-Instruct", 8e9), ("google/gemma-3-4b-it", 4e9), ("org/model", None)],
)
def test_parameters_from_a_model_name(name: str, count: float | None) -> None:
    assert parameters_from_name(name) == (int(count) if count else None)


def test_progress_lines_say_i_of_n_and_bytes() -> None:
    assert describe("Loading weights", 120, 291, "it") == "Loading weights 120/291"
    assert describe("model-00001-of-00004.safetensors", 1.2e9, 4.9e9, "B") == (
        "model-00001-of-00004.safetensors 1.2 GB of 4.9 GB (24%)"
    )
    assert describe("", 3, None, "it") == "progress 3"


def test_a_reported_bar_hands_its_lines_to_the_callback() -> None:
    lines: list[str] = []
    bar = progress_class(lines.append)
    for _ in bar(range(5), desc="Loading weights"):
        pass
    assert lines[0] == "Loading weights 0/5" and lines[-1] == "Loading weights 5/5"
    assert len(lines) <= 3  # at most once a second, plus the start and the end


def test_transformers_bars_are_reported_only_while_loading() -> None:
    from transformers.utils import logging as hf_logging

    lines: list[str] = []
    with reporting_load_progress(lines.append):
        for _ in hf_logging.tqdm(range(4), desc="Loading weights"):
            pass
    assert lines[-1] == "Loading weights 4/4"
    count = len(lines)
    for _ in hf_logging.tqdm(range(4), desc="Loading weights", disable=True):
        pass
    assert len(lines) == count, "the hook is removed after the load"
