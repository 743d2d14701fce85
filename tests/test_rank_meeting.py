"""The ranks' meeting (trainer/rank_meeting.py), the one protocol of a launched run's ranks and
a script's: when the ranks meet, what they agree on, when rank 0 reports their rows.

Here one process: a real single-rank gloo group, and a second rank played behind
``torch.distributed``'s calls (its wishes folded in as ``all_reduce``'s MAX would). The real
multi-rank runs are in test_distributed.py (a launched run) and test_callback.py (a script).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loratop.core import events as ev
from loratop.core.distributed import RankInfo
from loratop.trainer.event_sink import EventSink
from loratop.trainer.memory_watch import rank_memory_row
from loratop.trainer.rank_meeting import STOP_CODES, STOP_REASONS, Agreement, RankMeeting
from tests.conftest import of_type, read_events

TWO = RankInfo(rank=0, local_rank=0, world_size=2, local_world_size=2)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _row(rank: RankInfo, level: str | None = None, spills: int | None = None) -> dict[str, Any]:
    row = rank_memory_row(rank, {"host": {"rss": 1 << 20}}, "cpu", None)
    row.update(oom_level=level, spills=spills)
    return row


class OtherRank:
    """``torch.distributed`` as rank 0 of two sees it: the other rank's integers and row."""

    class ReduceOp:
        MAX = "max"

    def __init__(self) -> None:
        self.flags = [0, 0, 0, 0, 0, 0, 0]
        """The other rank's integers: stop code, saves, cannot write, due, OOM level, spills, next."""
        self.row = _row(RankInfo(rank=1, local_rank=1, world_size=2, local_world_size=2))
        self.gathers = 0

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def get_backend(self) -> str:
        return "gloo"

    def all_reduce(self, tensor: Any, op: Any) -> None:
        import torch

        assert op == self.ReduceOp.MAX
        tensor.copy_(torch.maximum(tensor, torch.tensor(self.flags, dtype=tensor.dtype)))

    def all_gather_object(self, out: list[Any], obj: Any) -> None:
        self.gathers += 1
        out[0], out[1] = obj, self.row


def test_one_rank_in_a_real_gloo_group_meets_reports_and_paces_its_meetings(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sink = EventSink(tmp_path / "events.jsonl")
        clock = Clock()
        rank = RankInfo()
        meeting = RankMeeting(rank, sink, clock=clock)
        assert meeting.due(1), "the first step meets"
        first = meeting.meet(1, None, 1, False, _row(rank))
        assert first.stop is None and first.save and not first.no_save
        clock.now += 1 / 64  # a step of 15.6 ms: the next meeting 12 steps on (SYNC_INTERVAL_S = 0.2 s)
        assert meeting.due(2)
        second = meeting.meet(2, "SIGTERM", 1, False, _row(rank))
        assert second.stop == "SIGTERM" and not second.save, "one checkpoint per request"
        assert not meeting.due(13) and meeting.due(14)
        sink.close()
    finally:
        dist.destroy_process_group()
    (ranks,) = of_type(read_events(tmp_path), ev.RANKS)  # the second meeting was not due to report
    assert ranks["step"] == 1 and ranks["world_size"] == 1 and ranks["ranks"][0]["rank"] == 0


def test_another_ranks_wishes_become_this_ranks_at_the_same_meeting(tmp_path: Path) -> None:
    sink = EventSink(tmp_path / "events.jsonl")
    other, clock = OtherRank(), Clock()
    meeting = RankMeeting(TWO, sink, dist=other, clock=clock)
    assert meeting.meet(1, None, 0, False, _row(TWO)) == Agreement(None, False, False)
    gathered = other.gathers
    other.flags[:3] = [STOP_CODES["stop requested"], 1, 1]  # a script's dashboard stop, a checkpoint, a full disk
    clock.now += 0.5
    agreed = meeting.meet(2, None, 0, False, _row(TWO))
    assert agreed.stop == "stop requested" and agreed.save and agreed.no_save
    assert other.gathers == gathered, "nothing changed and none due: no rows gathered"
    other.flags[4] = 2  # the other rank's OOM forecast went to WATCH: reported at once
    clock.now += 0.5
    assert meeting.meet(3, "SIGTERM", 0, False, _row(TWO)).stop == "SIGTERM", "a rank keeps its own reason"
    assert other.gathers == gathered + 1
    other.flags[0] = len(STOP_REASONS) + 1  # a reason without a code
    assert RankMeeting(TWO, None, dist=other).meet(1, None, 0, False, _row(TWO)).stop == "stop on another rank"
    sink.close()
    ranks = of_type(read_events(tmp_path), ev.RANKS)
    assert [r["step"] for r in ranks] == [1, 3]
    assert [row["rank"] for row in ranks[-1]["ranks"]] == [0, 1]


@pytest.mark.parametrize("reason", STOP_REASONS)
def test_every_stop_reason_crosses_to_the_other_ranks_by_name(reason: str) -> None:
    other = OtherRank()
    other.flags[0] = STOP_CODES[reason]
    assert RankMeeting(TWO, None, dist=other).meet(1, None, 0, False, _row(TWO)).stop == reason


def test_without_a_process_group_nobody_meets() -> None:
    import torch.distributed as dist

    assert not dist.is_initialized()
    assert not RankMeeting(TWO, None).due(1)
