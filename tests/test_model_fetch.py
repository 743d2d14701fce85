"""A GPU-sized sample on a box that cannot run it (issue 16, item 1).

``run`` refuses, in one line and in seconds, a hub model that is neither local nor cached
when the hub cannot be reached; ``check`` says so, and says what a GPU-sized model would
cost on this CPU; a load reports what it is doing as phase messages.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loratop.trainer.config import load_config, parse_overrides
from loratop.trainer.cpu_estimate import cpu_epoch_hours, cpu_training_warning, parameters_from_name
from loratop.trainer.model_config import unavailable_model
from loratop.trainer.runtime.load_progress import describe, progress_class, reporting_load_progress
from loratop.tui.samples import resolve_config_path

QWEN = "Qwen/Qwen2.5-7B-Instruct"


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def offline_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An empty Hugging Face cache and a hub endpoint that refuses connections."""
    env = {
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
    }
    for key in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
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
        [sys.executable, "-m", "loratop.tui.cli", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_refuses_in_one_line_and_creates_nothing(offline_box: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = _loratop("run", "qwen2.5-7b-qlora", "--no-tui", "--set", "output_dir=runs/q", cwd=work, env=offline_box)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"loratop: model.name_or_path = {QWEN}: ") and "hub is unreachable" in lines[0]
    assert result.stdout == ""
    assert not (work / "runs").exists(), "a refused launch leaves no run folder"


def test_check_warns_that_run_would_refuse_the_model(offline_box: dict[str, str], tmp_path: Path) -> None:
    result = _loratop("check", "qwen2.5-7b-qlora", cwd=tmp_path, env={**offline_box, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "HF_HUB_OFFLINE is set" in result.stdout and "`loratop run` refuses it" in result.stdout


def test_check_says_the_run_must_download_the_model_without_trying_the_hub(
    offline_box: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from loratop.trainer import model_config
    from loratop.tui.cli import main

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
