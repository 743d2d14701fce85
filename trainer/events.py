"""The event protocol between the trainer and whoever watches it.

Standard library only: the dashboard imports this module, and it must not pull in
torch, textual or anything heavy.

Every event is one JSON object on one line with at least ``v`` (protocol version),
``seq`` (0, 1, 2, ... with no gaps within a run), ``t`` (unix seconds) and ``type``.
Decoding is tolerant: a broken line or an unknown type is skipped and counted by
:class:`Decoder`, never raised, so one bad byte cannot take the dashboard down.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1

RUN_STARTED = "run_started"
STEP = "step"
MEMORY = "memory"
SPIKE = "spike"
SPILL = "spill"
OOM_RISK = "oom_risk"
CHECKPOINT = "checkpoint"
RUN_FINISHED = "run_finished"
LOG = "log"
PAGED_STATE = "paged_state"

EVENT_TYPES: frozenset[str] = frozenset(
    {RUN_STARTED, STEP, MEMORY, SPIKE, SPILL, OOM_RISK, CHECKPOINT, RUN_FINISHED, LOG, PAGED_STATE}
)
"""Every type this protocol version knows. ``log`` carries a short human-readable
phase message ("loading model", "tokenising dataset") so a watcher can show progress
before the first step. ``paged_state`` accounts the paged optimizer state once the
optimizer exists (at the first step)."""

# run_finished statuses
COMPLETED = "completed"
STOPPED = "stopped"
FAILED = "failed"
OOM = "oom"
FINISH_STATUSES: frozenset[str] = frozenset({COMPLETED, STOPPED, FAILED, OOM})


def jsonable(value: Any) -> Any:
    """Make a value JSON-safe without losing what it means.

    NaN and infinities are not valid JSON; they are written as the strings
    ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` and read back as floats by
    :func:`decode_line`. A NaN loss is exactly what a watcher must see.
    """
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

# Fields whose values are numbers; their non-finite spellings are turned back into floats.
_FLOAT_FIELDS = frozenset({"loss", "grad_norm", "lr", "learning_rate", "baseline", "score"})


def encode(seq: int, type_: str, fields: dict[str, Any], t: float | None = None) -> bytes:
    """Encode one event as a JSON line (UTF-8, ending in ``\\n``).

    Args:
        seq: The event's sequence number within the run.
        type_: One of :data:`EVENT_TYPES`.
        fields: The event's own fields; they must not use the envelope names.
        t: Unix time; now if omitted.

    Returns:
        The encoded line.
    """
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    clash = {"v", "seq", "t", "type"} & fields.keys()
    if clash:
        raise ValueError(f"event fields clash with the envelope: {sorted(clash)}")
    obj: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "seq": seq,
        "t": time.time() if t is None else t,
        "type": type_,
    }
    obj.update(jsonable(fields))
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode()


def decode_line(line: bytes | str) -> dict[str, Any] | None:
    """Decode one line into an event dict, or ``None`` if it is not a valid event.

    A valid event is a JSON object with an integer ``seq`` ≥ 0, a numeric ``t``, a
    known ``type`` and an integer ``v``. Non-finite numbers written by :func:`encode`
    come back as floats.
    """
    try:
        if isinstance(line, bytes):
            line = line.decode()
        obj = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(obj, dict):
        return None
    seq, t, type_, v = obj.get("seq"), obj.get("t"), obj.get("type"), obj.get("v")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return None
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        return None
    if not isinstance(v, int) or type_ not in EVENT_TYPES:
        return None
    for key in _FLOAT_FIELDS & obj.keys():
        value = obj[key]
        if isinstance(value, str) and value in _NON_FINITE:
            obj[key] = _NON_FINITE[value]
    return obj


@dataclass
class Decoder:
    """Turns a byte stream (pipe chunks or file reads) into events, tolerantly.

    Feed it arbitrary chunks; it keeps an incomplete trailing line until the rest
    arrives. Lines that are not valid events are counted in :attr:`skipped`.
    """

    skipped: int = 0
    """Lines that were not valid events (broken JSON, unknown type, bad envelope)."""
    max_line: int = 16 * 1024 * 1024
    """A partial line longer than this is dropped as garbage rather than kept forever."""
    _buffer: bytes = field(default=b"", repr=False)

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        """Add bytes and return every complete, valid event they finish."""
        data = self._buffer + chunk
        *lines, self._buffer = data.split(b"\n")
        if len(self._buffer) > self.max_line:
            self._buffer = b""
            self.skipped += 1
        events = []
        for line in lines:
            if not line.strip():
                continue
            event = decode_line(line)
            if event is None:
                self.skipped += 1
            else:
                events.append(event)
        return events

    def close(self) -> list[dict[str, Any]]:
        """Flush a final line that had no newline (e.g. a file cut mid-write)."""
        rest, self._buffer = self._buffer, b""
        if not rest.strip():
            return []
        event = decode_line(rest)
        if event is None:
            self.skipped += 1
            return []
        return [event]


def read_events(path: str) -> tuple[list[dict[str, Any]], int]:
    """Read every valid event from an ``events.jsonl`` file.

    Returns:
        The events in file order, and how many lines were skipped.
    """
    decoder = Decoder()
    with open(path, "rb") as fh:
        events = decoder.feed(fh.read())
    events += decoder.close()
    return events, decoder.skipped
