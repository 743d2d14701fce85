"""The one lookup of a model's config.json, as ``loratop check`` and ``loratop estimate`` share it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loratop.preflight.architectures import model_type_of
from loratop.preflight.model_config import TINY_CONFIG, ModelConfigError, read_model_config

REPO = Path(__file__).resolve().parent.parent
LLAMA_7B = REPO / "tests" / "data" / "configs" / "llama-7b"


def cache_model(hub_cache: Path, repo_id: str, config: dict[str, object]) -> None:
    """Lay ``config`` out in ``hub_cache`` the way huggingface_hub does."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text(json.dumps(config))


def test_tiny_needs_no_files() -> None:
    config = read_model_config("tiny")

    assert config.data == TINY_CONFIG and config.data is not TINY_CONFIG
    assert config.source == "the embedded tiny Llama (trainer/tiny_model.py)"
    assert model_type_of("tiny") == "llama"


def test_a_folder_or_its_config_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))

    assert read_model_config(str(tmp_path)).source == str(tmp_path / "config.json")
    assert read_model_config(str(tmp_path / "config.json")).data == {"model_type": "qwen2"}
    assert model_type_of(str(tmp_path)) == "qwen2"
    assert read_model_config(str(LLAMA_7B)).data["model_type"] == "llama"


@pytest.mark.parametrize(
    ("content", "why"), [("{not json", "Expecting property name"), ("[1, 2]", "is not a JSON object")]
)
def test_an_unreadable_config_is_one_line(tmp_path: Path, content: str, why: str) -> None:
    (tmp_path / "config.json").write_text(content)

    with pytest.raises(ModelConfigError, match=why) as caught:
        read_model_config(str(tmp_path))

    assert str(caught.value).startswith(f"cannot read config.json for {tmp_path}: ") and "\n" not in str(caught.value)
    assert model_type_of(str(tmp_path)) is None


def test_a_folder_without_config_and_a_name_that_is_neither(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=f"the folder {tmp_path} has no config.json"):
        read_model_config(str(tmp_path))
    with pytest.raises(ModelConfigError, match="no such folder, and not a hub id"):
        read_model_config(str(tmp_path / "missing"))


def test_both_commands_find_a_hub_model_in_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache_model(tmp_path, "someorg/some-model", {"model_type": "mistral"})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    config = read_model_config("someorg/some-model")

    assert (config.data, config.source) == ({"model_type": "mistral"}, "the Hugging Face cache")
    assert model_type_of("someorg/some-model") == "mistral"


def test_check_never_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    with pytest.raises(ModelConfigError) as caught:
        read_model_config("someorg/not-cached", download=False)

    assert (
        str(caught.value)
        == "cannot read config.json for someorg/not-cached: not local and not in the Hugging Face cache"
    )
    assert model_type_of("someorg/not-cached") is None


def test_estimate_loads_neither_the_tiny_model_builder_nor_the_hub_client() -> None:
    script = (
        "import json, sys\n"
        "from loratop.preflight.estimate import load_model_shape\n"
        "load_model_shape('tiny')\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    modules = json.loads(result.stdout.splitlines()[-1])

    assert "loratop.preflight.model_config" in modules
    assert [m for m in modules if m in ("loratop.trainer.tiny_model", "huggingface_hub", "torch")] == []
