"""A compact record of a run's events, beside ``events.jsonl``, so a long run opens in a second.

Standard library only (the dashboard reads it). ``events.jsonl`` stays the source of truth:
the index is derived from it, covers a prefix of it, and is rebuilt when missing or stale.

``.loratop-index/`` in the run folder holds:

- ``steps.bin``: one record of :data:`STEP_FIELDS` (8-byte int64 or float64 each, little
  endian) per ``step`` event;
- ``memory.bin``: one record of :data:`MEMORY_FIELDS` per ``memory`` event (what the
  dashboard folds from it: the series, the peaks);
- ``rare.jsonl``: every other event (run_started, log, spike, checkpoint, ...), each line
  ``<end offset> <the event's line>``;
- ``meta.json``: the format, and a fingerprint of ``events.jsonl``'s first line, which tells
  an index from another run (a folder replaced or rewritten) from this run's own.

Every record carries the byte offset in ``events.jsonl`` where its event ends. Records are
appended in event order, so the index is always a prefix of the events: a reader loads it,
then reads ``events.jsonl`` from the largest such offset on. A writer that fails once (a full
disk) stops writing the index; the reader then reads a longer tail, and nothing is wrong.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import struct
import tempfile
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratop.core import events as ev
from loratop.core.gpu_busy import busy_pct
from loratop.core.run_dir import EVENTS, read_json

INDEX = ".loratop-index"
FORMAT = 3
"""3: memory records carry ``busy`` (NVML utilisation of the GPU rank 0 trains on)."""
STEP_FIELDS = (("seq", "q"), ("end", "q"), ("step", "q"), ("loss", "d"), ("lr", "d"), ("grad_norm", "d"),
               ("tokens", "q"), ("t", "d"))  # fmt: skip
"""Name and type (``q`` int64, ``d`` float64) of each field of a step record."""
MEMORY_FIELDS = (("seq", "q"), ("end", "q"), ("t", "d"), ("kind", "d"), ("value", "d"), ("max_gpu_used", "d"),
                 ("rss", "d"), ("busy", "d"))  # fmt: skip
"""``kind``: 0 when ``value`` is GPU 0's NVML used bytes, 1 when it is host RSS, NaN when
neither was read. ``max_gpu_used``: the highest used bytes of any GPU in the sample. ``busy``:
NVML's busy % of the GPU rank 0 trains on (``cuda:0``), NaN when not reported."""
GPU, HOST = 0.0, 1.0
Columns = dict[str, "array[Any]"]
"""A record file's fields as columns: ``array('q')`` or ``array('d')`` by the field's type."""
_NAN = math.nan


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _NAN


def _layout(fields: tuple[tuple[str, str], ...]) -> struct.Struct:
    return struct.Struct("<" + "".join(kind for _, kind in fields))


STEP_RECORD, MEMORY_RECORD = _layout(STEP_FIELDS), _layout(MEMORY_FIELDS)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def step_record(event: dict[str, Any], end: int, nth: int) -> bytes:
    """A ``step`` event (the ``nth``, from 1) as its :data:`STEP_FIELDS` record; a missing step
    number reads as ``nth`` and missing tokens as 0, as :meth:`RunState.apply` reads them."""
    return STEP_RECORD.pack(
        event["seq"],
        end,
        _int(event.get("step"), nth),
        _num(event.get("loss")),
        _num(event.get("lr")),
        _num(event.get("grad_norm")),
        _int(event.get("tokens") or 0, 0),
        _num(event.get("t")),
    )


def memory_record(event: dict[str, Any], end: int) -> bytes:
    """A ``memory`` event as its :data:`MEMORY_FIELDS` record."""
    host = event.get("host")
    rss = _num(host.get("rss")) if isinstance(host, dict) else _NAN
    raw = event.get("gpus")
    gpus: list[Any] = raw if isinstance(raw, list) else []
    used = [_num(g.get("used")) for g in gpus if isinstance(g, dict)]
    used = [u for u in used if not math.isnan(u)]
    if gpus:
        first = gpus[0].get("used") if isinstance(gpus[0], dict) else None
        kind, value = (GPU, _num(first)) if isinstance(first, int) else (_NAN, _NAN)
    else:
        kind, value = (HOST, rss) if not math.isnan(rss) else (_NAN, _NAN)
    busy = busy_pct(gpus)
    top, busy_value = max(used, default=_NAN), _NAN if busy is None else busy
    return MEMORY_RECORD.pack(event["seq"], end, _num(event.get("t")), kind, value, top, rss, busy_value)


def _fingerprint(first_line: bytes) -> str:
    return f"{len(first_line)}:{zlib.crc32(first_line):08x}"


class IndexWriter:
    """Appends to a run's index as its events are written (the trainer's sink, or a rebuild).

    Never raises: the first failure (a full disk, a removed folder) turns it off for good,
    which leaves a valid prefix.
    """

    def __init__(self, run_dir: Path, folder: Path | None = None) -> None:
        self.folder = folder if folder is not None else run_dir / INDEX
        self.failed: str | None = None
        """Why the index stopped being written, or ``None``."""
        self._files: dict[str, int] = {}
        self._meta_written = False
        self._meta: dict[str, Any] = {}
        self.wrote = False
        """Whether anything was indexed."""
        self._steps = 0
        self.skipped = 0
        """Lines given that were not valid events (not indexed; counted in ``meta.json``)."""

    def add(self, line: bytes, end: int, event: dict[str, Any] | None = None) -> None:
        """Index one event: its encoded ``line``, which ends at byte ``end`` of ``events.jsonl``.

        ``event`` is the decoded line when the caller has it (else it is decoded here).
        """
        if self.failed is not None:
            return
        try:
            if not self._meta_written:
                self._start(line, end)
            event = event if event is not None else ev.decode_line(line)
            if event is None:
                self.skipped += 1
                return
            name, record = _RECORDS.get(event["type"], _RARE)
            self._append(name, record(self, event, line, end))
        except OSError as exc:
            self.failed = exc.strerror or str(exc)
            self.close()
        except (ValueError, OverflowError, struct.error) as exc:  # a number no record can hold
            self.failed = f"{line[:60]!r}: {exc}"  # from here on the rest is read from events.jsonl
            self.close()

    def _step_record(self, event: dict[str, Any], line: bytes, end: int) -> bytes:
        self._steps += 1
        return step_record(event, end, self._steps)

    def _memory_record(self, event: dict[str, Any], line: bytes, end: int) -> bytes:
        return memory_record(event, end)

    def _rare_line(self, event: dict[str, Any], line: bytes, end: int) -> bytes:
        return b"%d " % end + line.rstrip(b"\n") + b"\n"

    def _start(self, line: bytes, end: int) -> None:
        if end != len(line):
            raise OSError(0, "the index must start with the first event")
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in ("steps.bin", "memory.bin", "rare.jsonl"):
            with contextlib.suppress(FileNotFoundError):
                (self.folder / name).unlink()
        self._meta = {"format": FORMAT, "first_line": _fingerprint(line)}
        self._write_meta()
        self._meta_written = self.wrote = True

    def _write_meta(self) -> None:
        tmp = self.folder / f".meta.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self._meta) + "\n")
        os.replace(tmp, self.folder / "meta.json")

    def _append(self, name: str, data: bytes) -> None:
        fd = self._files.get(name)
        if fd is None:
            fd = self._files[name] = os.open(self.folder / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])

    def close(self) -> None:
        """Close the files; a count of skipped lines goes into ``meta.json``."""
        if self.skipped and self.failed is None and self._meta_written:
            self._meta["skipped"] = self.skipped
            with contextlib.suppress(OSError):
                self._write_meta()
        for fd in self._files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files.clear()


_Record = Callable[[IndexWriter, dict[str, Any], bytes, int], bytes]
_RECORDS: dict[str, tuple[str, _Record]] = {
    ev.STEP: ("steps.bin", IndexWriter._step_record),
    ev.MEMORY: ("memory.bin", IndexWriter._memory_record),
}
"""Where each event type is indexed and as what (the index's one dispatch table): the file, and
the record made of the event, its line and where that line ends in ``events.jsonl``."""
_RARE: tuple[str, _Record] = ("rare.jsonl", IndexWriter._rare_line)
"""Every other type (a newer trainer's too): its line as it is, after its end offset."""


@dataclass
class Index:
    """What a run's index holds, as columns."""

    steps: Columns
    """:data:`STEP_FIELDS` → one value per step event."""
    memory: Columns
    """:data:`MEMORY_FIELDS` → one value per memory event."""
    rare: list[dict[str, Any]] = field(default_factory=list)
    """Every other event, decoded, in order."""
    covered: int = 0
    """Bytes of ``events.jsonl`` the index covers: read the file from here on."""
    count: int = 0
    """Events in the index."""
    skipped: int = 0
    """Lines of the covered part that were not valid events (a rebuild counts them)."""


def _columns(data: bytes, fields: tuple[tuple[str, str], ...]) -> Columns:
    width = len(fields)
    whole = len(data) // (8 * width) * 8 * width  # a torn last record is left out
    view = memoryview(data)[:whole]
    columns: Columns = {}
    for i, (name, kind) in enumerate(fields):
        column = array(kind)
        typed = view.cast("q") if kind == "q" else view.cast("d")
        column.frombytes(typed[i::width].tobytes())  # one strided copy, at C speed
        columns[name] = column
    return columns


def load_index(run_dir: Path) -> Index | None:
    """The run's index, or ``None`` when it is missing, of another format or another run's,
    claims more than ``events.jsonl`` holds (the file was rewritten), or is damaged in any way
    (an index is a cache of the events: anything wrong with it means reading them instead)."""
    try:
        return _load_index(run_dir)
    except (ValueError, IndexError, OverflowError, TypeError, KeyError, RecursionError, MemoryError):
        return None


def index_looks_current(run_dir: Path) -> bool:
    """Whether the run has an index of this format, of this ``events.jsonl``: its small meta
    file checked, not its records (:func:`load_index` reads them all: megabytes for a long
    run). A damaged record is found when the index is read, which then reads the events."""
    meta = read_json(run_dir / INDEX / "meta.json")
    try:
        with open(run_dir / EVENTS, "rb") as fh:
            first = fh.readline()
        stamp = _file_stamp(run_dir / EVENTS)
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("first_line") != _fingerprint(first):
        return False
    built = meta.get("events")
    return built is None or built == stamp  # the trainer's own index has no stamp: it grew with the file


def _load_index(run_dir: Path) -> Index | None:
    folder = run_dir / INDEX
    meta = read_json(folder / "meta.json")
    try:
        with open(run_dir / EVENTS, "rb") as fh:
            first = fh.readline()
            size = os.fstat(fh.fileno()).st_size
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("first_line") != _fingerprint(first):
        return None
    steps = _columns(_read(folder / "steps.bin"), STEP_FIELDS)
    memory = _columns(_read(folder / "memory.bin"), MEMORY_FIELDS)
    for cols in (steps, memory):  # records are appended in order: the first and last bound the rest
        if cols["seq"] and (cols["seq"][0] < 0 or cols["end"][0] <= 0 or cols["end"][-1] > size):
            return None  # damaged (random bytes, another file's records): read the events instead
    rare: list[dict[str, Any]] = []
    rare_ends: list[int] = []
    rare_lines: list[bytes] = []
    for raw in _read(folder / "rare.jsonl").split(b"\n"):
        head, _, line = raw.partition(b" ")
        event = ev.decode_line(line) if head.isdigit() else None
        if event is None:
            break  # a torn or damaged tail: the events from here on are read from events.jsonl
        rare.append(event)
        rare_ends.append(int(head))
        rare_lines.append(line)
    built = meta.get("events")
    if not isinstance(built, dict):  # the trainer's: only the events before the first one missing count
        hole = _first_missing(steps, memory, rare)
        if hole is not None:
            steps, memory = _before(steps, hole), _before(memory, hole)
            keep = sum(1 for event in rare if event["seq"] < hole)
            rare, rare_ends, rare_lines = rare[:keep], rare_ends[:keep], rare_lines[:keep]
    ends = [int(cols["end"][-1]) for cols in (steps, memory) if cols["end"]] + rare_ends[-1:]
    covered = max(ends, default=0)
    last_rare = rare_lines[-1] if rare_lines else b""
    if covered > size or not _last_matches(run_dir / EVENTS, covered, steps, memory, last_rare):
        return None  # events.jsonl was rewritten, cut or replaced since: this index is not its
    if isinstance(built, dict):  # a cached index of a finished run: it covers the whole file it was built from
        try:
            if built != _file_stamp(run_dir / EVENTS):
                return None  # the file has changed since
        except OSError:
            return None  # the run went while we read it
        cached_cover = meta.get("covered")
        covered = max(covered, cached_cover if isinstance(cached_cover, int) and cached_cover <= size else 0)
    count = len(rare) + len(steps["seq"]) + len(memory["seq"])
    skipped = meta.get("skipped", 0)
    return Index(steps, memory, rare, covered, count, skipped if isinstance(skipped, int) else 0)


def _first_missing(steps: Columns, memory: Columns, rare: list[dict[str, Any]]) -> int | None:
    """The first ``seq`` the index lacks while it holds a later one (a record lost when the
    machine went down: files are not written to disk in order), or ``None``."""
    count = len(steps["seq"]) + len(memory["seq"]) + len(rare)
    lasts = [cols["seq"][-1] for cols in (steps, memory) if cols["seq"]] + [e["seq"] for e in rare[-1:]]
    if not lasts or max(lasts) == count - 1:
        return None  # seq 0 .. count-1, each once: nothing missing
    seen = bytearray(count + 1)
    for seq in (*steps["seq"], *memory["seq"], *(e["seq"] for e in rare)):
        if 0 <= seq <= count:
            seen[seq] = 1
    return seen.index(0)


def _before(cols: Columns, seq: int) -> Columns:
    keep = bisect.bisect_left(cols["seq"], seq)
    return {name: column[:keep] for name, column in cols.items()}


def _last_matches(path: Path, covered: int, steps: Columns, memory: Columns, rare_line: bytes) -> bool:
    """Whether the line of ``events.jsonl`` that ends at ``covered`` is the index's last event."""
    if covered == 0:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, covered - 65536))
            chunk = fh.read(min(covered, 65536))
    except OSError:
        return False
    if not chunk.endswith(b"\n"):
        return False
    line = chunk[:-1].rsplit(b"\n", 1)[-1]
    for cols in (steps, memory):
        if cols["end"] and int(cols["end"][-1]) == covered:
            event = ev.decode_line(line)
            return event is not None and (event["seq"], _num(event["t"])) == (cols["seq"][-1], cols["t"][-1])
    return line == rare_line


def _file_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def fold_file(run_dir: Path, on_event: Any, *, cache_if: Any = None, start: int = 0) -> tuple[int, int]:
    """Decode ``events.jsonl`` from byte ``start`` on, handing each event to ``on_event``.

    With ``cache_if`` (a predicate called at the end) and ``start`` 0, the index is written on
    the way, into a temporary folder that replaces :data:`INDEX` only when ``cache_if()`` holds
    (a finished run: a live one may still be indexed by its trainer).

    Returns:
        The offset after the last whole line read, and the lines that were not valid events.
    """
    try:
        with open(run_dir / EVENTS, "rb") as fh:
            fh.seek(start)
            data = fh.read()
    except OSError:
        return start, 0
    writer = None
    if cache_if and start == 0:
        try:  # a folder of its own: two looks at one run (a screen and the home list) never share one
            folder = Path(tempfile.mkdtemp(prefix=f"{INDEX}.", suffix=".tmp", dir=run_dir))
            folder.chmod(0o755)  # as a folder the trainer makes: others who may read the run may read it
            writer = IndexWriter(run_dir, folder)
        except OSError:
            writer = None  # read-only: folded without caching
    end, skipped = start, 0
    *lines, _partial = data.split(b"\n")  # only "\n" ends a line, as for every other reader
    for raw in lines:
        line = raw + b"\n"
        end += len(line)
        if not line.strip():
            continue
        event = ev.decode_line(line)
        if event is None:
            skipped += 1
        else:
            on_event(event)
        if writer is not None:
            writer.add(line, end, event)
    if writer is not None:
        writer.close()
        _settle(writer, run_dir, keep=writer.failed is None and writer.wrote and bool(cache_if()), covered=end)
    return end, skipped


def _settle(writer: IndexWriter, run_dir: Path, keep: bool, covered: int) -> None:
    import shutil

    if keep:
        with contextlib.suppress(OSError):
            writer._meta["events"] = _file_stamp(run_dir / EVENTS)  # a finished run's file stays as it is
            writer._meta["covered"] = covered
            writer._write_meta()
            if (run_dir / INDEX).exists():
                shutil.rmtree(run_dir / INDEX)
            os.replace(writer.folder, run_dir / INDEX)
            return
    shutil.rmtree(writer.folder, ignore_errors=True)
