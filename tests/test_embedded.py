"""The embedded dataset is reproducible and the tiny model is built once, then cached."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from loratop.preflight.data_files import EMBEDDED_DATASETS, inspect_data
from tests.conftest import REPO


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_tool_chat", REPO / "scripts" / "make_tool_chat.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_dataset_is_what_the_script_generates(tmp_path: Path) -> None:
    out = tmp_path / "tool_chat.jsonl"
    _generator().main(["--out", str(out)])
    shipped = EMBEDDED_DATASETS["tool-chat"].read_bytes()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(shipped).hexdigest()


def test_the_shipped_dataset_is_chat_rows() -> None:
    info = inspect_data("embedded:tool-chat")
    assert info.rows == 3000 and info.format == "messages"
    rows = [json.loads(line) for line in EMBEDDED_DATASETS["tool-chat"].read_text().splitlines()]
    assert {m["role"] for row in rows for m in row["messages"]} == {"system", "user", "assistant", "tool"}


def test_tiny_model_is_built_once_then_cached(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from loratop.trainer import tiny_model

    monkeypatch.setenv("LORATOP_CACHE", str(tmp_path))
    folder, built = tiny_model.tiny_model_dir()
    assert built and (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    again, built_again = tiny_model.tiny_model_dir()
    assert again == folder and not built_again
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] == tiny_model.SPEC["hidden_size"]
    assert [p.name for p in tmp_path.iterdir()] == [folder.name], "no staging folder left behind"
