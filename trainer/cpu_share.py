"""How much CPU the trainer got, and how busy its cores were, between two samples (psutil).

The memory sampler adds these figures to each ``memory`` event's ``host`` (from the second
sample on: a rate needs two readings); :mod:`core.cpu_busy` judges them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import psutil


class CpuShare:
    """Reads CPU time: the trainer's process tree (DataLoader workers included), the time its
    threads waited for a core (Linux's run-queue delay, ``/proc/PID/task/TID/schedstat``), and
    the busy time of the cores it may run on (steal time counts as busy: another VM had the core).

    Args:
        process: The trainer's process (this one by default).
        clock: Seconds, monotonic.
    """

    def __init__(self, process: psutil.Process | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._process = process if process is not None else psutil.Process()
        self._clock = clock
        try:
            self._cores = sorted(self._process.cpu_affinity() or [])
        except (AttributeError, psutil.Error):  # no affinity on this platform: every core
            self._cores = []
        if not self._cores:
            self._cores = list(range(psutil.cpu_count() or 1))
        self._last: tuple[float, float, float, float | None] | None = None

    def read(self) -> dict[str, float | int] | None:
        """``cpu_trainer``, ``cpu_busy`` and ``cpu_waited`` (cores' worth since the previous
        read) and ``cpu_cores``; ``None`` on the first read, or when the figures cannot be read."""
        try:
            children = self._process.children(recursive=True)
            now, own, busy = self._clock(), self._own_seconds(children), self._busy_seconds()
        except psutil.Error:
            return None
        waited = self._waited_seconds([self._process.pid, *(child.pid for child in children)])
        last, self._last = self._last, (now, own, busy, waited)
        if last is None or now <= last[0]:
            return None
        wall = now - last[0]
        cores = len(self._cores)
        # A worker that exited between two reads takes its time with it: never below zero.
        figures: dict[str, float | int] = {
            "cpu_trainer": round(max(0.0, (own - last[1]) / wall), 3),
            "cpu_busy": round(min(float(cores), max(0.0, (busy - last[2]) / wall)), 3),
            "cpu_cores": cores,
        }
        if waited is not None and last[3] is not None:
            figures["cpu_waited"] = round(max(0.0, (waited - last[3]) / wall), 3)
        return figures

    def _own_seconds(self, children: list[psutil.Process]) -> float:
        times = self._process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in children:
            with contextlib.suppress(psutil.Error):  # it exited this instant
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
        return total

    @staticmethod
    def _waited_seconds(pids: list[int]) -> float | None:
        """Seconds the threads of ``pids`` spent ready to run but waiting for a core (the second
        figure of each thread's ``schedstat``); ``None`` where the kernel does not say."""
        total, read = 0.0, 0
        for pid in pids:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue  # no /proc (not Linux), or a worker that exited this instant
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as fh:
                        total += int(fh.read().split()[1]) / 1e9
                    read += 1
                except (OSError, IndexError, ValueError):
                    continue  # a thread that exited this instant, or a kernel without schedstat
        return total if read else None

    def _busy_seconds(self) -> float:
        per_cpu = psutil.cpu_times(percpu=True)
        busy = 0.0
        for index in self._cores:
            if index < len(per_cpu):
                t = per_cpu[index]
                busy += t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0)
                busy += getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)
        return busy
