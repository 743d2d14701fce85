"""How the ranks of a run agree, at a step boundary, on stopping and checkpointing.

One protocol for a launched run's ranks and for a script's under ``LoratopCallback``. The
ranks meet about every :data:`SYNC_INTERVAL_S` (rank 0 names the next step to meet at, from
the pace so far) and at every ``save_steps`` step, over one ``all_reduce`` of a few integers:
the stop wish (a code each, :data:`STOP_REASONS`), the checkpoint requests, whether a rank
cannot write, the worst OOM level, the most spills, the next step. The rows themselves (a
pickled dict each) are gathered only when rank 0 is due to report (every
:data:`RANKS_REPORT_S`) or a level or spill count changed; every rank knows when from the
same reduced integers, so every decision is made on all ranks alike and no rank waits alone
in a collective.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loratop.core import events as ev
from loratop.core.distributed import RankInfo, worst_rank
from loratop.core.oom_forecast import LEVELS as OOM_LEVELS
from loratop.trainer.event_sink import Sink

STOP_REASONS = (
    "SIGTERM", "SIGINT", "spike", "disk full", "events.jsonl cannot be written", "run folder removed",
    "torchrun agent gone", "early stopping", "stop requested",
)  # fmt: skip
"""Why a run stops, as the ranks tell each other (a code each: its place here, plus 1)."""
STOP_CODES = {reason: i + 1 for i, reason in enumerate(STOP_REASONS)}
STOP_ELSEWHERE = "stop on another rank"
"""The stop of a rank whose reason has no code (never expected: every reason above has one)."""
SYNC_INTERVAL_S = 0.2
"""How often, at most, the ranks of a run meet to agree on stops and checkpoints: a stop
lands within this (plus a step) of the signal, on the same step everywhere."""
MAX_SYNC_GAP = 1000
RANKS_REPORT_S = 2.0
"""Rank 0 reports every rank's row at most this often (at once when a level or a spill count
changes): 8 ranks' rows are ~2 KB, so a six-hour run adds ~20 MB to events.jsonl, not 90."""


@dataclass(frozen=True)
class Agreement:
    """What every rank decided at one meeting."""

    stop: str | None
    """The stop every rank acts on (this rank's own reason when it had one), or ``None``."""
    save: bool
    """Checkpoint at this step: a request came since the last meeting, on some rank."""
    no_save: bool
    """Some rank cannot write (a full disk): no rank checkpoints."""


class RankMeeting:
    """The meetings of one rank with the others (see the module docstring).

    Args:
        rank: This process's place in the run.
        sink: Where rank 0 writes the ``ranks`` event (``None``: nowhere; the others' sink
            writes nothing).
        report_every_s: Least seconds between two ``ranks`` events (at a level or spill change
            at once); at least :data:`RANKS_REPORT_S`.
        save_steps: The Trainer's checkpoint rhythm (0: none): the ranks also meet at each
            such step, so that none checkpoints onto a disk another rank found full.
        dist: ``torch.distributed``, or an object with its ``is_available``, ``is_initialized``,
            ``get_backend``, ``all_reduce``, ``all_gather_object`` and ``ReduceOp``.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        rank: RankInfo,
        sink: Sink | None,
        report_every_s: float = RANKS_REPORT_S,
        save_steps: int = 0,
        dist: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rank = rank
        self.sink = sink
        self._report_every = max(RANKS_REPORT_S, report_every_s)
        self._save_steps = save_steps
        self._dist = dist
        self._clock = clock
        self._next = 0
        """The step at which the ranks next meet (rank 0 names it at each meeting)."""
        self._last: tuple[float, int] | None = None
        """When and at which step the last meeting was."""
        self._saves_done = 0
        self._reported = 0.0
        """When rank 0 last reported every rank's row."""
        self._seen: tuple[int, int] | None = None
        """The worst OOM level and the most spills over the ranks at the last report."""

    def _torch_dist(self) -> Any:
        if self._dist is None:
            import torch.distributed as dist

            self._dist = dist
        return self._dist

    def due(self, step: int) -> bool:
        """Whether the ranks meet at ``step`` (the same answer on every rank); never without
        a process group."""
        dist = self._torch_dist()
        if not (dist.is_available() and dist.is_initialized()):
            return False
        return step >= self._next or bool(self._save_steps and step % self._save_steps == 0)

    def meet(self, step: int, stop: str | None, saves: int, cannot_write: bool, row: dict[str, Any]) -> Agreement:
        """Meet the other ranks at ``step`` (call only where :meth:`due`, on every rank).

        Args:
            step: The step every rank is at.
            stop: This rank's reason to stop, if any.
            saves: Checkpoint requests this rank has had so far (a count that only grows): a
                request on any rank is one checkpoint, whichever rank had it first.
            cannot_write: This rank cannot write (its disk is full).
            row: This rank's line in the ``ranks`` event (its ``oom_level`` and ``spills``).
        """
        import torch

        dist = self._torch_dist()
        now = self._clock()
        if self._last is not None and step > self._last[1]:
            pace = (now - self._last[0]) / (step - self._last[1])  # seconds per step
            ahead = max(1, min(MAX_SYNC_GAP, int(SYNC_INTERVAL_S / pace) if pace > 0 else MAX_SYNC_GAP))
        else:
            ahead = 1
        self._last = (now, step)
        code = STOP_CODES.get(stop, len(STOP_REASONS) + 1) if stop else 0
        due = self.rank.is_main and now - self._reported >= self._report_every
        level = OOM_LEVELS.index(row["oom_level"]) + 1 if row.get("oom_level") in OOM_LEVELS else 0
        mine = [code, saves, int(cannot_write), int(due), level, row.get("spills") or 0]
        mine.append(step + ahead if self.rank.is_main else 0)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        flags = torch.tensor(mine, dtype=torch.int64, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        agreed, saves_any, no_save, due_any, worst_level, most_spills, self._next = (int(x) for x in flags.tolist())
        if agreed and stop is None:
            stop = STOP_REASONS[agreed - 1] if agreed <= len(STOP_REASONS) else STOP_ELSEWHERE
        # The agent passes a SIGUSR1 to every rank, and each may get it a step apart: one
        # checkpoint per request, at the first meeting where any rank has it.
        save = saves_any > self._saves_done
        self._saves_done = saves_any
        if due_any or (worst_level, most_spills) != self._seen:
            self._seen = (worst_level, most_spills)
            self._report(step, row)
        return Agreement(stop if agreed else None, save, bool(no_save))

    def _report(self, step: int, row: dict[str, Any]) -> None:
        """Every rank's row to rank 0, which writes them as one ``ranks`` event."""
        dist = self._torch_dist()
        gathered: list[Any] = [None] * self.rank.world_size
        dist.all_gather_object(gathered, row)
        if self.rank.is_main:
            self._reported = self._clock()
        if self.rank.is_main and self.sink is not None:
            rows = [g for g in gathered if g]
            self.sink.emit(ev.RANKS, step=step, world_size=self.rank.world_size, ranks=rows, worst=worst_rank(rows))


__all__ = [
    "MAX_SYNC_GAP",
    "RANKS_REPORT_S",
    "STOP_CODES",
    "STOP_REASONS",
    "SYNC_INTERVAL_S",
    "Agreement",
    "RankMeeting",
]
