"""Find a run's training data and read its shape, without torch or ``datasets``.

``loratop check`` calls :func:`inspect_data` so that a missing file, an empty file,
a broken line or a row of the wrong format is reported before anything launches.
The trainer uses the same function to decide how to load the rows.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratop.preflight.model_config import HUB_CONNECT_TIMEOUT, hub_unreachable, offline_variable

EMBEDDED_DIR = Path(__file__).parent / "embedded"
EMBEDDED_DATASETS = {"tool-chat": EMBEDDED_DIR / "tool_chat.jsonl"}
"""Datasets shipped inside the package, named in a config as ``embedded:NAME``."""

SUFFIXES = (".jsonl", ".json", ".parquet")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_PEEK_ROWS = 200


class DataProblem(Exception):
    """The data cannot be used; the message says why, in words for the user."""


@dataclass(frozen=True)
class DataInfo:
    """What :func:`inspect_data` found."""

    source: str
    """``file``, ``embedded`` or ``hub``."""
    file: Path | None
    """The local file, for ``file`` and ``embedded``."""
    rows: int | None
    """Row count; ``None`` for a hub dataset (not fetched by a check)."""
    format: str | None
    """``text``, ``prompt_completion`` or ``messages``; ``None`` when not known yet."""


def row_format(row: Any) -> str | None:
    """The format of one row: ``messages``, ``prompt_completion``, ``text`` or ``None``."""
    if not isinstance(row, dict):
        return None
    messages = row.get("messages")
    if (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        return "messages"
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return "prompt_completion"
    if isinstance(row.get("text"), str):
        return "text"
    return None


_FORMAT_NEEDS = {
    "messages": "a 'messages' list of {role, content} objects",
    "prompt_completion": "string fields 'prompt' and 'completion'",
    "text": "a string field 'text'",
}


def resolve_path(path: str) -> tuple[str, Path | None]:
    """Classify a ``data.path``: ``(source, file)``.

    Raises:
        DataProblem: an unknown embedded name, or a file path that does not exist.
    """
    if path.startswith("embedded:"):
        name = path.split(":", 1)[1]
        if name not in EMBEDDED_DATASETS:
            raise DataProblem(
                f"no embedded dataset {name!r}; accepted: " + ", ".join(f"embedded:{n}" for n in EMBEDDED_DATASETS)
            )
        return "embedded", EMBEDDED_DATASETS[name]
    file = Path(path).expanduser()
    if file.is_dir():
        raise DataProblem(f"is a folder; expected a {', '.join(SUFFIXES)} file, a hub dataset id or embedded:tool-chat")
    if file.is_file():
        if file.suffix not in SUFFIXES:
            raise DataProblem(f"unsupported file type {file.suffix or '(none)'!r}; accepted: {', '.join(SUFFIXES)}")
        return "file", file
    if file.suffix in SUFFIXES or path.startswith(("/", ".", "~")) or not _HUB_ID.match(path):
        raise DataProblem("file not found")
    return "hub", None


def _read_rows(file: Path, limit: int | None) -> tuple[list[Any], int]:
    """The first ``limit`` rows (all when ``None``) and the total row count."""
    if file.suffix == ".jsonl":
        rows: list[Any] = []
        count = 0
        with file.open("rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                count += 1
                if limit is None or len(rows) < limit:
                    try:
                        rows.append(json.loads(line))
                    except UnicodeDecodeError:
                        raise DataProblem(f"line {lineno} is not valid UTF-8") from None
                    except ValueError as exc:
                        raise DataProblem(f"line {lineno} is not valid JSON ({exc.args[0].split(':')[0]})") from None
        return rows, count
    if file.suffix == ".json":
        try:
            data = json.loads(file.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataProblem(f"not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataProblem('a .json file must hold a list of rows (or {"data": [...]})')
        return (data if limit is None else data[:limit]), len(data)
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with datasets
        raise DataProblem("reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        pf = pq.ParquetFile(file)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataProblem(f"not a readable parquet file ({exc})") from None
    count = pf.metadata.num_rows
    head = pf.read_row_group(0).slice(0, limit or count).to_pylist() if pf.num_row_groups else []
    return head, count


def inspect_data(path: str, fmt: str = "auto") -> DataInfo:
    """Check that ``data.path`` exists, has rows, and that the rows fit ``fmt``.

    Reads a local file's first rows and counts the rest; does not fetch a hub
    dataset (that is checked when the trainer loads it).

    Raises:
        DataProblem: with a message naming what is wrong.
    """
    source, file = resolve_path(path)
    if file is None:
        return DataInfo(source, None, None, None if fmt == "auto" else fmt)
    try:
        rows, count = _read_rows(file, _PEEK_ROWS)
    except OSError as exc:  # e.g. no read permission: a user mistake, not a traceback
        raise DataProblem(f"cannot read: {exc.strerror or exc}") from None
    if count == 0:
        raise DataProblem("the dataset is empty (no rows)")
    detected = row_format(rows[0])
    if fmt == "auto":
        if detected is None:
            keys = sorted(rows[0]) if isinstance(rows[0], dict) else type(rows[0]).__name__
            raise DataProblem(
                f"cannot tell the format of row 1 (keys: {keys}); "
                "expected a 'messages', 'prompt'+'completion' or 'text' field"
            )
        fmt = detected
    for index, row in enumerate(rows, 1):
        if row_format(row) != fmt and not (
            fmt == "text" and isinstance(row, dict) and isinstance(row.get("text"), str)
        ):
            raise DataProblem(f"row {index} does not fit data.format {fmt!r}: needs {_FORMAT_NEEDS[fmt]}")
    return DataInfo(source, file, count, fmt)


def datasets_cache_dir() -> Path:
    """Where ``datasets`` keeps the hub datasets it has prepared (``HF_DATASETS_CACHE``, else
    ``$HF_HOME/datasets``, else ``~/.cache/huggingface/datasets``): the cache ``load_dataset``
    falls back on without the hub."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "datasets"


def _snake_case(name: str) -> str:
    """``datasets``' folder name for a dataset name (its ``camelcase_to_snakecase``)."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z\d])([A-Z])", r"\1_\2", name).lower()


def cached_hub_dataset(dataset_id: str) -> Path | None:
    """The folder of a hub dataset that ``datasets`` has prepared before, or ``None``.

    Laid out as ``datasets`` lays it out: ``<namespace>___<snake_case name>/<config>/<version>/<hash>/``;
    it loads from there when the hub cannot be reached.
    """
    *namespace, name = dataset_id.split("/")
    folder = datasets_cache_dir() / "___".join([*namespace, _snake_case(name)])
    try:
        return folder if any(entry.is_dir() for entry in folder.glob("*/*/*")) else None
    except OSError:
        return None


DATA_FETCH_ADVICE = (
    'save it to a file where the hub is reachable (`python -c "import datasets; '
    "datasets.load_dataset('{name}', split='{split}').to_json('{stem}.jsonl')\"`) and set data.path to that "
    "file, or set data.path: embedded:tool-chat (shipped with loratop) for a trial"
)
"""How to get a hub dataset a run cannot fetch; ``{name}``, ``{split}``, ``{stem}``."""


def unavailable_dataset(
    path: str, split: str = "train", *, probe: bool = True, timeout: float = HUB_CONNECT_TIMEOUT
) -> str | None:
    """Why a run could not load this hub dataset here, found within ``timeout`` seconds.

    Without this a run on an offline box loads the model first (a minute and more), then
    ends in ``datasets``' ``ConnectionError`` traceback.

    Args:
        path: A ``data.path`` (or ``data.eval_path``): a local file and ``embedded:NAME``
            are never unavailable here (:func:`inspect_data` checks them).
        split: The split a run loads (``data.split``), for the advice.
        probe: Whether to try a connection to the hub (``loratop check`` does not: it never
            touches the network); without it only ``HF_HUB_OFFLINE`` or
            ``HF_DATASETS_OFFLINE`` makes a hub dataset unavailable.
        timeout: Seconds the hub has to answer.

    Returns:
        One line for the user (what is missing and how to get it), or ``None`` when the data
        is local, the dataset is in ``datasets``' cache, or the hub answers (it may still
        refuse a gated or missing dataset: the run then says so).
    """
    try:
        source, _ = resolve_path(path)
    except DataProblem:
        return None  # a config problem, reported by the config check
    if source != "hub" or cached_hub_dataset(path) is not None:
        return None
    where = f"not a local file and not in the Hugging Face datasets cache ({datasets_cache_dir()})"
    advice = DATA_FETCH_ADVICE.format(name=path, split=split, stem=path.rsplit("/", 1)[-1])
    offline = offline_variable(datasets=True)
    if offline is not None:
        return f"{where}, and {offline} is set: {advice}"
    unreachable = hub_unreachable(timeout) if probe else None
    if unreachable:
        return f"{where}, and the hub is unreachable ({unreachable}): {advice}"
    return None


def needs_dataset_download(path: str) -> bool:
    """Whether a run must fetch this data from the hub (a hub dataset ``datasets`` has not cached)."""
    try:
        source, _ = resolve_path(path)
    except DataProblem:
        return False
    return source == "hub" and cached_hub_dataset(path) is None


def load_rows(file: Path) -> list[dict[str, Any]]:
    """Every row of a local data file (the trainer's loader for local files)."""
    rows, _ = _read_rows(file, None)
    return rows


def held_out_rows(eval_split: float, rows: int) -> int:
    """How many of ``rows`` a ``data.eval_split`` holds out: a row count as is, a fraction
    rounded up (as ``datasets``' ``train_test_split`` does)."""
    return int(eval_split) if eval_split >= 1 else math.ceil(eval_split * rows)


def usable_rows(
    path: str, fmt: str = "auto", max_rows: int | None = None, eval_split: float | None = None
) -> int | None:
    """The rows a run would train on (capped by ``data.max_rows``, less those ``data.eval_split``
    holds out), or ``None`` when unknown.

    ``None`` for a hub dataset (not fetched here) or a data file with a problem; the
    config check reports the problem, callers that only want the count need not.
    """
    try:
        rows = inspect_data(path, fmt).rows
    except DataProblem:
        return None
    if rows is not None and max_rows is not None and max_rows > 0:
        rows = min(rows, max_rows)
    if rows is not None and eval_split is not None:
        rows = max(0, rows - held_out_rows(eval_split, rows))
    return rows
