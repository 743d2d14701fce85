"""Whether other work on the host takes CPU time from the trainer (its ETA then stretches).

Pure (standard library only). The trainer's memory sampler measures, between two samples,
how many cores' worth of time its own process tree used, how long its threads waited for a
core, and how many of the cores it may run on were busy with anything (``memory`` events,
``host.cpu_*``); the dashboard judges the latest of them with :func:`cpu_contended` and says
so beside the ETA.

The cores are **contended** when, on average over the window, they were nearly all busy
(:data:`SATURATED`), work other than the trainer's held a real share of them (at least
:data:`OTHERS_MIN_CORES` of a core and :data:`OTHERS_SHARE` of them), and the trainer's threads
spent a real share of their time ready to run but waiting for a core (:data:`WAITED_SHARE`; the
kernel's run-queue delay, where the sampler could read it). A trainer alone on its cores, a GPU
run on a box whose other cores are busy but whose own thread gets its core, or a run of several
ranks (each rank's own work is "other" to rank 0, so it is not judged) never reads contended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SATURATED = 0.9
"""The share of the trainer's cores that must be busy (with anything) for contention."""
OTHERS_MIN_CORES = 0.5
"""Other work must hold at least this many cores' worth of time..."""
OTHERS_SHARE = 0.25
"""...and at least this share of the trainer's cores."""
WAITED_SHARE = 0.2
"""The share of its runnable time the trainer's threads must have waited for a core."""
WINDOW_S = 30.0
"""Samples over this many seconds are averaged: a compile or a burst of a few seconds is not contention."""


@dataclass(frozen=True)
class CpuSample:
    """One sample of the CPU figures of a ``memory`` event's ``host``."""

    t: float
    """When it was taken (the event's time)."""
    trainer: float
    """Cores the trainer's process tree used since the previous sample (2.0: two cores' worth)."""
    busy: float
    """Cores busy with anything (the trainer included) among those the trainer may run on."""
    cores: int
    """The cores the trainer may run on (its CPU affinity)."""
    waited: float | None = None
    """Cores' worth of time the trainer's threads were ready to run but waited for a core;
    ``None`` where the kernel does not say (not Linux)."""

    @classmethod
    def from_host(cls, t: Any, host: Any) -> CpuSample | None:
        """The sample of a ``memory`` event's ``host`` dict; ``None`` where it has none (the
        first sample of a run, a run recorded before loratop measured CPU time)."""
        if not isinstance(host, dict) or not isinstance(t, (int, float)):
            return None
        trainer, busy, cores = host.get("cpu_trainer"), host.get("cpu_busy"), host.get("cpu_cores")
        if not (isinstance(trainer, (int, float)) and isinstance(busy, (int, float)) and type(cores) is int):
            return None
        if cores <= 0 or not (trainer >= 0 and busy >= 0):  # NaN fails both
            return None
        waited = host.get("cpu_waited")
        if not (isinstance(waited, (int, float)) and waited >= 0):
            waited = None  # the kernel did not say (not Linux)
        return cls(float(t), float(trainer), float(busy), cores, None if waited is None else float(waited))


def cpu_contended(samples: Sequence[CpuSample], window_s: float = WINDOW_S) -> bool:
    """Whether the trainer's cores were saturated and other work held a real share of them,
    on average over the samples of the last ``window_s`` seconds (see the module docstring)."""
    if not samples:
        return False
    since = samples[-1].t - window_s
    recent = [s for s in samples if s.t >= since]
    cores = recent[-1].cores
    busy = sum(s.busy for s in recent) / len(recent)
    trainer = sum(s.trainer for s in recent) / len(recent)
    others = busy - trainer
    if busy < SATURATED * cores or others < max(OTHERS_MIN_CORES, OTHERS_SHARE * cores):
        return False
    waits = [s.waited for s in recent if s.waited is not None]
    if not waits:  # the kernel's run-queue delay unknown here: saturated cores, others' share, say so
        return True
    waited = sum(waits) / len(waits)
    return waited >= WAITED_SHARE * (trainer + waited)
