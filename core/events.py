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
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict, Union, get_args, get_origin, get_type_hints, is_typeddict

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
RANKS = "ranks"
ALERT = "alert"
EVAL = "eval"

EVENT_TYPES: frozenset[str] = frozenset(
    {RUN_STARTED, STEP, MEMORY, SPIKE, SPILL, OOM_RISK, CHECKPOINT, RUN_FINISHED, LOG, PAGED_STATE, RANKS, ALERT, EVAL}
)
"""Every type this protocol version knows. ``log`` carries a short human-readable
phase message ("loading model", "tokenising dataset") so a watcher can show progress
before the first step. ``paged_state`` accounts the paged optimizer state once the
optimizer exists (at the first step). ``ranks`` (runs of several ranks) carries every
rank's memory, OOM level and spill count, gathered by rank 0 at a step boundary.
``alert`` is something the user must see: a rank lost, overfitting. ``eval`` is the held-out
loss, on the eval schedule and at the end."""

# run_finished statuses
COMPLETED = "completed"
STOPPED = "stopped"
FAILED = "failed"
OOM = "oom"
DISK_FULL = "disk_full"
"""The disk (or quota) of the run folder filled: the run stopped at a step boundary."""
FINISH_STATUSES: frozenset[str] = frozenset({COMPLETED, STOPPED, FAILED, OOM, DISK_FULL})

# A run's status while no run_finished says how it ended (the header, ls, status.json's state)
STARTING = "starting"
"""Launched; no step yet (the model loads)."""
RUNNING = "running"
PAUSED = "paused"
"""The trainer is alive but stopped (``SIGSTOP``, Ctrl-Z, a debugger): no step will come until
it is continued."""
UNKNOWN = "unknown"
"""Nothing proves the trainer still runs, nor that it is gone (recorded on another host, or by
an older loratop without a start time)."""
LOST = "lost"
"""The trainer is gone without a ``run_finished`` event: killed (``kill -9``, the kernel's OOM
killer), or crashed hard."""
LIVE_STATUSES: frozenset[str] = frozenset({STARTING, RUNNING, PAUSED})
"""The statuses of a run whose trainer may still write."""


# -- payloads ---------------------------------------------------------------------------
# Each event's own fields, defined once. ``total=False``: a field may be absent (an older
# trainer, a GPU-only figure on CPU); where present it has the type written here, or the
# decoder skips the line as garbled. Fields not listed are allowed (a newer trainer).
# Nested rows (a GPU's memory, torch's figures) are TypedDicts of their own.


class Envelope(TypedDict):
    """What every event carries."""

    v: int
    seq: int
    t: float
    type: str


class LogEvent(Envelope, total=False):
    message: str
    level: str


class HostMemory(TypedDict, total=False):
    rss: int
    total: int
    available: int
    cpu_trainer: float
    """Cores' worth of CPU time the trainer's process tree got since the previous sample
    (absent from a run's first sample, and from runs recorded before loratop measured it)."""
    cpu_busy: float
    """Cores' worth of busy time, any process's, on the cores the trainer may run on, since the previous sample."""
    cpu_cores: int
    """How many cores the trainer may run on (its CPU affinity)."""
    cpu_waited: float
    """Cores' worth of time the trainer's threads were ready to run but waited for a core, since
    the previous sample (Linux's run-queue delay; absent where the kernel does not say)."""


class TorchMemory(TypedDict, total=False):
    allocated: int
    reserved: int
    peak: int
    """Since the current step began."""
    inactive_split: int
    num_alloc_retries: int
    num_ooms: int


class GpuMemory(TypedDict, total=False):
    index: int
    """NVML's index (what nvidia-smi shows)."""
    cuda_index: int
    """Torch's ordinal: the GPU's place in ``CUDA_VISIBLE_DEVICES`` (``cuda:N``)."""
    mig_index: int
    """The MIG instance's index on its parent, for a MIG device."""
    name: str
    used: int
    total: int
    free: int
    util_pct: float | None
    temp_c: float | None
    power_w: float | None
    process_used: int
    process_used_note: str
    torch: TorchMemory


class MemoryEvent(Envelope, total=False):
    host: HostMemory
    gpu_state: str
    """``ok``, ``no_nvidia_gpu`` or ``nvml_error``."""
    gpu_note: str
    gpus: list[GpuMemory]


class PagedStateEvent(Envelope, total=False):
    step: int
    available: bool
    paged_bytes: int
    paged_tensors: int
    unpaged_bytes: int
    unpaged_tensors: int
    params_below_page_threshold: int
    spill_method: str
    spill_reason: str
    note: str


class SpillEvent(Envelope, total=False):
    step: int | None
    bytes: int
    refill_bytes: int | None
    records: int | None
    start_ns: int
    end_ns: int
    method: str
    total_events: int | None
    total_bytes: int | None


class OomRiskEvent(Envelope, total=False):
    step: int
    level: str
    """``ok``, ``watch``, ``danger`` or ``n/a``."""
    predicted_peak: int | None
    available: int | None
    headroom: int | None
    reason: str
    seen_tokens: int
    """The largest batch (padded tokens) the forecast has seen run so far."""


class Params(TypedDict, total=False):
    trainable: int
    total: int
    fraction: float
    groups: dict[str, Any]
    unexpected: list[Any]
    base_frozen: bool
    lora_b_nonzero: list[Any]
    lora_b_zero: bool


class RunStartedEvent(Envelope, total=False):
    run_name: str
    run_dir: str
    pid: int
    config: dict[str, Any]
    model: dict[str, Any]
    device: dict[str, Any]
    data: dict[str, Any]
    max_steps: int
    versions: dict[str, str]
    params: Params


class StepEvent(Envelope, total=False):
    step: int
    loss: float | None
    """This step's own loss, not a window average; NaN shows."""
    lr: float | None
    grad_norm: float | None
    tokens: int
    """Non-padding tokens seen so far."""
    epoch: float | None
    step_time_s: float


class SpikeEvent(Envelope, total=False):
    step: int
    loss: float | None
    baseline: float | None
    score: float | None
    severity: str
    kind: str
    reason: str
    grad_norm: float | None
    action: str


class CheckpointEvent(Envelope, total=False):
    step: int
    path: str
    final: bool


class RunFinishedEvent(Envelope, total=False):
    status: str
    """One of :data:`FINISH_STATUSES`."""
    duration_s: float
    stopped_by: str
    error: dict[str, Any] | None
    step: int
    """The last optimizer step trained."""
    adapter: str | None
    """Where the final adapter was saved (its own folder, or a rescue folder), or ``None``."""
    adapter_step: int
    """Early stopping: the step whose adapter was kept (the best evaluation's), not the last."""
    rescued_to: str
    """The rescue folder that holds a copy of the run (its folder was full or removed)."""


class RankGpu(TypedDict, total=False):
    index: int
    """NVML's index."""
    cuda_index: int
    name: str
    used: int
    total: int
    peak: int
    """Torch's allocator peak of the last step."""


class RankRow(TypedDict, total=False):
    rank: int
    node: int
    local_rank: int
    host: str
    pid: int
    gpu: RankGpu | None
    """This rank's GPU, or ``None`` on CPU (``gpu_note`` says why)."""
    gpu_note: str
    rss: int
    """Host RSS of this rank's process."""
    oom_level: str | None
    spills: int | None
    """Spill events so far; ``None`` where nothing is paged."""
    spill_bytes: int | None


class RanksEvent(Envelope, total=False):
    step: int
    world_size: int
    ranks: list[RankRow]
    worst: int | None
    """The rank (its place in ``ranks``) with the least GPU headroom, else the largest RSS."""


class EvalEvent(Envelope, total=False):
    step: int
    eval_loss: float | None
    eval_tokens: int | None
    """Non-padding tokens in the eval set."""
    eval_rows: int | None
    """Rows in the eval set; ``None`` when the run could not tell (a script's own Trainer)."""
    duration_s: float | None
    """Time the evaluation took (not counted as training time in tokens/s)."""
    best_loss: float | None
    best_step: int | None


class AlertEvent(Envelope, total=False):
    kind: str
    """``rank_lost``: a rank died and torchrun ended the others; ``overfitting``: eval loss rose
    ``monitor.overfit_evals`` evaluations in a row while training loss fell; ``gpu_starved``:
    the GPU stayed under 30 % busy for a minute while steps ran."""
    step: int
    message: str
    busy_pct: float
    """``gpu_starved``: the GPU's mean busy % over the window."""
    knobs: list[str]
    """``gpu_starved``: the knobs to try, most likely first (``section.name: value``)."""
    rank: int
    node: int
    local_rank: int
    pid: int
    exit_code: int | None
    host: str


PAYLOADS: dict[str, type] = {
    RANKS: RanksEvent,
    EVAL: EvalEvent,
    ALERT: AlertEvent,
    LOG: LogEvent,
    MEMORY: MemoryEvent,
    PAGED_STATE: PagedStateEvent,
    SPILL: SpillEvent,
    OOM_RISK: OomRiskEvent,
    RUN_STARTED: RunStartedEvent,
    STEP: StepEvent,
    SPIKE: SpikeEvent,
    CHECKPOINT: CheckpointEvent,
    RUN_FINISHED: RunFinishedEvent,
}
"""The payload of every event type (the envelope ``v``, ``seq``, ``t``, ``type`` aside)."""

Check = Callable[[Any], bool]


INT_MIN, INT_MAX = -(2**63), 2**63 - 1
"""The range of an integer in an event (int64, as the index stores it)."""

_SCALARS: dict[Any, frozenset[type]] = {
    type(None): frozenset({type(None)}),
    bool: frozenset({bool}),
    int: frozenset({int}),  # exact types: json.loads makes no subclasses, and True is not a step
    float: frozenset({int, float}),  # JSON writes 2.0 as 2
    str: frozenset({str}),
}


def _scalar_types(hint: Any) -> frozenset[type] | None:
    """The exact types a scalar annotation (or a union of them) admits; ``None`` if not scalar."""
    if hint in _SCALARS:
        return _SCALARS[hint]
    if get_origin(hint) in (Union, types.UnionType):
        parts = [_scalar_types(arg) for arg in get_args(hint)]
        if all(part is not None for part in parts):
            return frozenset().union(*(part for part in parts if part is not None))
    return None


def _checker(hint: Any) -> Check:
    """A fast predicate for one annotation (built once per field at import): decoding a long
    run's file calls these millions of times."""
    scalars = _scalar_types(hint)
    if scalars is not None:
        if int in scalars:
            # Every integer of the protocol is a count, a size or a time: one past int64 is a
            # damaged line (and would overflow the compact arrays it is folded into).
            return lambda value: type(value) in scalars and (type(value) is not int or INT_MIN <= value <= INT_MAX)
        return lambda value: type(value) in scalars
    if hint is Any:
        return lambda value: True
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        options = [_checker(arg) for arg in args]
        return lambda value: any(option(value) for option in options)
    if origin is list:
        item = _checker(args[0]) if args else _checker(Any)
        return lambda value: type(value) is list and all(item(v) for v in value)
    if origin is dict:
        of_value = _checker(args[1]) if args else _checker(Any)
        return lambda value: type(value) is dict and all(of_value(v) for v in value.values())
    if is_typeddict(hint):
        fields, floats = _field_checkers(hint), _float_fields(hint)
        return lambda value: type(value) is dict and _fields_conform(value, fields, floats)
    raise TypeError(f"no checker for annotation {hint!r}")


def _fields_conform(obj: dict[str, Any], checks: dict[str, Check], floats: frozenset[str]) -> bool:
    """Check ``obj``'s known fields; first turn ``"NaN"``/``"Infinity"`` back into floats
    where a float belongs (:func:`jsonable` wrote them so), at any depth."""
    for key in floats & obj.keys():
        value = obj[key]
        if type(value) is str and value in _NON_FINITE:
            obj[key] = _NON_FINITE[value]
    for key, value in obj.items():
        check = checks.get(key)
        if check is not None and not check(value):
            return False
    return True


def _field_checkers(payload: Any) -> dict[str, Check]:
    envelope = get_type_hints(Envelope) if payload is not Envelope else {}
    return {name: _checker(hint) for name, hint in get_type_hints(payload).items() if name not in envelope}


def _float_fields(payload: Any) -> frozenset[str]:
    """The fields of a payload (or a nested row) that may hold a float, so ``"NaN"`` there
    means the number."""
    out = set()
    for name, hint in get_type_hints(payload).items():
        if hint is float or float in get_args(hint):
            out.add(name)
    return frozenset(out)


_CHECKS: dict[str, dict[str, Check]] = {kind: _field_checkers(payload) for kind, payload in PAYLOADS.items()}
_FLOATS: dict[str, frozenset[str]] = {kind: _float_fields(payload) for kind, payload in PAYLOADS.items()}


def conforms(event: dict[str, Any]) -> bool:
    """Whether a decoded event's known fields have their protocol types (the envelope is
    :func:`decode_line`'s to check)."""
    kind = str(event.get("type"))
    checks = _CHECKS.get(kind)
    return checks is not None and _fields_conform(event, checks, _FLOATS[kind])


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
    known ``type`` and an integer ``v``, whose known fields have the types of its payload
    (:data:`PAYLOADS`). Non-finite numbers written by :func:`encode` come back as floats.
    """
    try:
        if isinstance(line, bytes):
            line = line.decode()
        obj = json.loads(line)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested past Python's stack
        return None
    if not isinstance(obj, dict):
        return None
    seq, t, type_, v = obj.get("seq"), obj.get("t"), obj.get("type"), obj.get("v")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= INT_MAX:
        return None
    if not isinstance(t, (int, float)) or isinstance(t, bool) or (isinstance(t, int) and not INT_MIN <= t <= INT_MAX):
        return None
    if not isinstance(v, int) or type_ not in EVENT_TYPES:
        return None
    return obj if conforms(obj) else None


@dataclass
class Decoder:
    """Turns a byte stream (pipe chunks or file reads) into events, tolerantly.

    Feed it arbitrary chunks; it keeps an incomplete trailing line until the rest
    arrives. Lines that are not valid events are counted in :attr:`skipped`.
    """

    skipped: int = 0
    """Lines that were not valid events (broken JSON, unknown type, bad envelope, a field
    of the wrong type)."""
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
