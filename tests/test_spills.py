"""Spill counting: the classifier on synthetic CUPTI record streams, the estimator's
hysteresis, the counter's three methods, and the CUPTI adapter against a fake binding.

Figures are in MiB and milliseconds so each expectation can be checked by eye.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Sequence
from enum import IntEnum
from typing import Any

import pytest
from fake_nvml import FakePynvml, four_gpus, install

from loratop.core.spills import (
    COHERENCE,
    DTOH,
    ESTIMATED,
    EVICTION,
    EXACT,
    HTOD,
    NOT_APPLICABLE,
    PREFETCH,
    MemoryReading,
    PagedRange,
    SpillClassifier,
    SpillEstimator,
    SpillEvent,
    SpillSourceUnavailable,
    UvmRecord,
    default_hysteresis,
    make_spill_counter,
    paged_ranges,
    reading_from_memory,
)
from loratop.trainer.cupti_spills import CuptiUvmSource, load_cupti
from loratop.trainer.memory_sampler import MemorySampler
from tests.conftest import REPO, nvidia_gpu_present

MIB = 1024 * 1024
GIB = 1024 * MIB
MS = 1_000_000
BASE = 0x7F00_0000_0000
"""Where the first paged buffer starts."""


def rec(
    offset_mib: float,
    size_mib: float,
    start_ms: float,
    dur_ms: float = 1,
    kind: str = DTOH,
    cause: str = EVICTION,
    device: int = 0,
) -> UvmRecord:
    """A record ``offset_mib`` past BASE, ``size_mib`` long, starting at ``start_ms``."""
    return UvmRecord(
        kind=kind,
        cause=cause,
        address=BASE + int(offset_mib * MIB),
        bytes=int(size_mib * MIB),
        start_ns=int(start_ms * MS),
        end_ns=int((start_ms + dur_ms) * MS),
        device=device,
    )


def classifier(*ranges_mib: tuple[float, float], gap_ms: float = 100) -> SpillClassifier:
    """A classifier over ranges given as (offset, size) in MiB from BASE, on device 0."""
    c = SpillClassifier(gap_ns=int(gap_ms * MS), device=0)
    c.set_ranges(PagedRange(BASE + int(o * MIB), int(s * MIB), 0) for o, s in ranges_mib or ((0, 64),))
    return c


# --- classifier ----------------------------------------------------------------------


def test_single_burst_is_one_event() -> None:
    c = classifier()
    assert c.feed([rec(0, 2, 0), rec(2, 2, 10), rec(4, 2, 20)], step=3) == []  # still open
    (event,) = c.flush(step=3)
    assert event == SpillEvent(3, 6 * MIB, 0, 3, 0, 21 * MS, EXACT)
    assert (c.events, c.bytes, c.records) == (1, 6 * MIB, 3)


def test_bursts_further_apart_than_the_gap_are_two_events() -> None:
    c = classifier()
    # first burst ends at 11 ms; the next starts at 200 ms: 189 ms > 100 ms
    done = c.feed([rec(0, 2, 0), rec(2, 2, 10), rec(4, 1, 200), rec(5, 1, 210)], step=1)
    assert [(e.bytes, e.records, e.start_ns, e.end_ns) for e in done] == [(4 * MIB, 2, 0, 11 * MS)]
    (second,) = c.flush(step=1)
    assert (second.bytes, second.records, second.start_ns, second.end_ns) == (2 * MIB, 2, 200 * MS, 211 * MS)
    assert (c.events, c.bytes) == (2, 6 * MIB)


def test_bursts_closer_than_the_gap_are_one_event() -> None:
    c = classifier()
    # ends at 11 ms; next starts at 100 ms (89 ms later), then exactly 100 ms after 101 ms
    assert c.feed([rec(0, 2, 0), rec(2, 2, 10), rec(4, 2, 100), rec(6, 2, 201)], step=2) == []
    (event,) = c.flush(step=2)
    assert (event.bytes, event.records, event.end_ns) == (8 * MIB, 4, 202 * MS)


def test_coherence_and_other_causes_do_not_count() -> None:
    c = classifier()
    records = [rec(0, 4, 0, cause=COHERENCE), rec(4, 4, 5, cause=PREFETCH), rec(8, 4, 9, cause="user")]
    assert c.feed(records, step=1) == []
    assert c.flush(step=1) == []
    assert (c.events, c.bytes) == (0, 0)


def test_records_of_another_device_are_ignored() -> None:
    c = classifier()
    assert c.feed([rec(0, 4, 0, device=1), rec(4, 4, 1, kind=HTOD, device=1)], step=1) == []
    assert c.flush(step=1) == []
    assert (c.bytes, c.orphan_refill_bytes) == (0, 0)


def test_ranges_of_another_device_are_ignored() -> None:
    c = SpillClassifier(device=0)
    c.set_ranges([PagedRange(BASE, 64 * MIB, device=1)])
    c.feed([rec(0, 4, 0)], step=1)
    assert c.flush(step=1) == []


def test_partial_overlaps_count_only_the_overlapping_bytes() -> None:
    c = classifier((0, 8))  # [BASE, BASE + 8 MiB)
    # 4 MiB starting 1 MiB before the range: 3 MiB inside; 4 MiB from offset 6: 2 MiB inside;
    # 2 MiB wholly outside: nothing
    c.feed([rec(-1, 4, 0), rec(6, 4, 1), rec(20, 2, 2)], step=1)
    (event,) = c.flush(step=1)
    assert (event.bytes, event.records) == (5 * MIB, 2)


def test_a_record_spanning_two_ranges_counts_both_overlaps() -> None:
    c = classifier((0, 4), (8, 4))  # [0, 4) and [8, 12) MiB
    c.feed([rec(2, 8, 0)], step=1)  # [2, 10): 2 MiB in the first, 2 MiB in the second
    (event,) = c.flush(step=1)
    assert event.bytes == 4 * MIB


def test_overlapping_ranges_never_count_a_byte_twice() -> None:
    c = classifier((0, 8), (4, 8))  # merged into [0, 12)
    assert c.range_count == 1
    assert c.overlap_bytes(BASE, 16 * MIB) == 12 * MIB


def test_out_of_order_records_are_sorted_by_start_time() -> None:
    c = classifier()
    done = c.feed([rec(0, 1, 310), rec(1, 1, 10), rec(2, 1, 300), rec(3, 1, 0)], step=1)
    assert [(e.start_ns, e.end_ns, e.records) for e in done] == [(0, 11 * MS, 2)]
    (second,) = c.flush(step=1)
    assert (second.start_ns, second.end_ns, second.records) == (300 * MS, 311 * MS, 2)


def test_refill_bytes_go_to_the_open_burst_even_beyond_the_gap() -> None:
    c = classifier()
    # evictions in the backward pass, bitsandbytes' prefetch 500 ms later at optimizer time
    c.feed([rec(0, 4, 0), rec(4, 4, 10)], step=7)
    c.feed([rec(0, 4, 500, kind=HTOD, cause="user"), rec(4, 4, 501, kind=HTOD, cause=COHERENCE)], step=7)
    c.feed([rec(40, 4, 502, kind=HTOD, cause="user", device=0)], step=7)  # offset 40 + 4 < 64: inside too
    c.feed([rec(100, 4, 503, kind=HTOD, cause="user")], step=7)  # outside every range: not a refill
    (event,) = c.flush(step=7)
    assert (event.bytes, event.refill_bytes, event.records) == (8 * MIB, 12 * MIB, 2)
    assert event.end_ns == 11 * MS  # refills do not stretch the burst
    assert (c.refill_bytes, c.orphan_refill_bytes) == (12 * MIB, 0)


def test_refills_with_no_open_burst_are_orphans() -> None:
    c = classifier()
    assert c.feed([rec(0, 4, 0, kind=HTOD, cause="user")], step=1) == []
    assert c.flush(step=1) == []
    assert (c.events, c.refill_bytes, c.orphan_refill_bytes) == (0, 0, 4 * MIB)


def test_refill_causes_can_be_restricted() -> None:
    c = SpillClassifier(device=0, refill_causes={"user"})
    c.set_ranges([PagedRange(BASE, 64 * MIB, 0)])
    c.feed([rec(0, 4, 0), rec(0, 4, 1, kind=HTOD, cause=PREFETCH), rec(0, 2, 2, kind=HTOD, cause="user")], 1)
    (event,) = c.flush(1)
    assert event.refill_bytes == 2 * MIB


def test_flush_at_a_step_boundary_closes_the_burst_and_tags_its_step() -> None:
    c = classifier()
    c.feed([rec(0, 2, 0)], step=4)
    (first,) = c.flush(step=4)
    c.feed([rec(2, 2, 50)], step=5)  # within the gap of the first, but the boundary closed it
    (second,) = c.flush(step=5)
    assert (first.step, first.bytes) == (4, 2 * MIB)
    assert (second.step, second.bytes) == (5, 2 * MIB)
    assert c.flush(step=6) == []


def test_a_burst_closed_by_a_later_record_keeps_the_step_it_started_in() -> None:
    c = classifier()
    c.feed([rec(0, 2, 0)], step=None)
    (event,) = c.feed([rec(2, 2, 500)], step=9)
    assert event.step == 9  # opened without a step: tagged by the step that closed it
    c.flush(step=9)


def test_overlap_with_many_ranges_matches_brute_force() -> None:
    rng = random.Random(7)
    ranges, start = [], BASE
    for _ in range(5_000):
        start += rng.randrange(1, 64) * 4096
        size = rng.randrange(1, 64) * 4096
        ranges.append(PagedRange(start, size, 0))
        start += size
    c = SpillClassifier()
    c.set_ranges(reversed(ranges))  # any order
    for _ in range(300):
        address = rng.randrange(BASE - MIB, start + MIB)
        size = rng.randrange(1, 4 * MIB)
        brute = sum(max(0, min(r.end, address + size) - max(r.start, address)) for r in ranges)
        assert c.overlap_bytes(address, size) == brute


class _Tensor:
    def __init__(self, ptr: int, numel: int, itemsize: int, page_deviceid: int | None) -> None:
        self._ptr, self._numel, self._itemsize = ptr, numel, itemsize
        if page_deviceid is not None:
            self.page_deviceid = page_deviceid

    def data_ptr(self) -> int:
        return self._ptr

    def numel(self) -> int:
        return self._numel

    def element_size(self) -> int:
        return self._itemsize


def test_paged_ranges_from_bitsandbytes_like_tensors() -> None:
    tensors = [_Tensor(BASE, 1000, 4, 1), _Tensor(BASE + 8192, 10, 1, None), _Tensor(BASE + 9000, 0, 4, 0)]
    assert paged_ranges(tensors) == [PagedRange(BASE, 4000, 1), PagedRange(BASE + 8192, 10, 0)]


# --- estimator -----------------------------------------------------------------------

RESERVED = 10 * GIB
OTHER = 512 * MIB
PAGED = 1 * GIB
H = 64 * MIB


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        self.now += 1_000 * MS
        return self.now


def reading(spilled: int) -> MemoryReading:
    """An NVML/torch reading for which the estimator must infer ``spilled`` bytes."""
    return MemoryReading(nvml_used=RESERVED + OTHER + PAGED - spilled, torch_reserved=RESERVED)


def estimator() -> SpillEstimator:
    return SpillEstimator(H, PAGED, OTHER, clock=Clock())


def test_estimator_ignores_noise_inside_the_band() -> None:
    e = estimator()
    for i in range(200):  # ±H/2 around 0 (clamped) and around 300 MiB
        assert e.update(reading(H // 2 if i % 2 else 0), step=i) is None
    e.update(reading(300 * MIB), step=200)
    for i in range(200):
        assert e.update(reading(300 * MIB + (H // 2 if i % 2 else -H // 2)), step=201 + i) is None
    assert e.events == 1


def test_estimator_fires_once_on_a_real_rise() -> None:
    e = estimator()
    assert e.update(reading(0), step=1) is None
    event = e.update(reading(400 * MIB), step=2)
    assert event == SpillEvent(2, 400 * MIB, None, None, 1_000 * MS, 2_000 * MS, ESTIMATED)
    assert e.update(reading(400 * MIB), step=3) is None
    assert (e.events, e.bytes, e.level) == (1, 400 * MIB, 400 * MIB)


def test_estimator_fires_per_stair_of_a_staircase() -> None:
    e = estimator()
    rises = [e.update(reading(s), step=i) for i, s in enumerate((200 * MIB, 400 * MIB, 600 * MIB))]
    assert [ev.bytes if ev else None for ev in rises] == [200 * MIB] * 3


def test_estimator_rearms_only_after_falling_back() -> None:
    e = estimator()
    assert e.update(reading(400 * MIB), step=1) is not None
    # falls less than H below the level, comes back: no event (level stays 400)
    assert e.update(reading(400 * MIB - H + MIB), step=2) is None
    assert e.update(reading(400 * MIB + H - MIB), step=3) is None
    # refilled (falls below 400 − H): re-armed at 0, so the next spill fires again
    assert e.update(reading(0), step=4) is None
    assert e.level == 0
    again = e.update(reading(400 * MIB), step=5)
    assert again is not None and again.bytes == 400 * MIB


def test_estimator_clamps_resident_bytes() -> None:
    e = SpillEstimator(H, PAGED, OTHER)
    # used − reserved − other is negative: nothing resident, all paged bytes spilled
    assert e.spilled(MemoryReading(nvml_used=RESERVED, torch_reserved=RESERVED)) == PAGED
    # far above the paged total (another process on the GPU): all resident, nothing spilled
    assert e.spilled(MemoryReading(nvml_used=RESERVED + 20 * GIB, torch_reserved=RESERVED)) == 0


def test_estimator_rejects_a_zero_band() -> None:
    with pytest.raises(ValueError):
        SpillEstimator(0, PAGED)


def test_reading_from_a_memory_event() -> None:
    fields = {"gpus": [{"index": 0, "used": 5, "total": 9, "torch": {"reserved": 3}}, {"index": 1, "used": 7}]}
    assert reading_from_memory(fields, 0) == MemoryReading(5, 3)
    assert reading_from_memory(fields, 1) is None  # no torch figures: no reading, not a zero
    assert reading_from_memory({"gpu_state": "no_nvidia_gpu", "gpus": []}, 0) is None


def test_default_hysteresis_stays_within_bounds() -> None:
    assert default_hysteresis(50 * MIB) == 16 * MIB
    assert default_hysteresis(1 * GIB) == GIB // 10
    assert default_hysteresis(100 * GIB) == 256 * MIB


# --- the counter ---------------------------------------------------------------------


class FakeSource:
    """Stands in for CUPTI (hardware CI lacks): replays scripted record batches."""

    def __init__(self, batches: Sequence[list[UvmRecord]] = (), dropped: int = 0, fail_at: int | None = None) -> None:
        self.batches = list(batches)
        self._dropped = dropped
        self.fail_at = fail_at
        self.drains = 0
        self.started_with: list[PagedRange] | None = None
        self.stopped = False

    def start(self, ranges: Sequence[PagedRange]) -> None:
        self.started_with = list(ranges)

    def drain(self) -> list[UvmRecord]:
        self.drains += 1
        if self.fail_at is not None and self.drains >= self.fail_at:
            raise RuntimeError("CUPTI_ERROR_UNKNOWN")
        return self.batches.pop(0) if self.batches else []

    def dropped(self) -> int:
        return self._dropped

    def stop(self) -> None:
        self.stopped = True


RANGES = [PagedRange(BASE, 64 * MIB, 0)]


def test_counter_is_not_applicable_on_cpu() -> None:
    counter = make_spill_counter("cpu", 0)
    assert (counter.method, counter.reason) == (NOT_APPLICABLE, "CPU run: nothing is paged")
    assert counter.step(1, {"gpus": []}) == [] and counter.close() == []
    totals = counter.totals()
    assert (totals.events, totals.bytes, totals.refill_bytes, totals.dropped_records) == (None, None, None, None)


def test_counter_is_not_applicable_when_nothing_is_paged() -> None:
    counter = make_spill_counter("cuda", 0, cupti_factory=lambda: pytest.fail("must not start CUPTI"))
    assert counter.method == NOT_APPLICABLE
    assert counter.reason == "nothing is paged: every optimizer state tensor is below 1e5 elements"
    assert make_spill_counter("cuda", GIB, paged_optimizer=False).method == NOT_APPLICABLE


def test_counter_is_exact_with_a_working_source() -> None:
    source = FakeSource(
        batches=[
            [rec(0, 4, 0), rec(4, 4, 10), rec(0, 8, 400, kind=HTOD, cause="user")],
            [],
            [rec(8, 2, 5_000), rec(0, 1, 5_001, cause=COHERENCE)],
        ]
    )
    counter = make_spill_counter("cuda", 64 * MIB, RANGES, cupti_factory=lambda: source)
    assert counter.method == EXACT and "1 paged buffers (64.0 MiB)" in counter.reason
    assert source.started_with == RANGES
    (first,) = counter.step(1)
    assert (first.step, first.bytes, first.refill_bytes, first.method) == (1, 8 * MIB, 8 * MIB, EXACT)
    assert counter.step(2) == []
    (last,) = counter.step(3)
    assert (last.step, last.bytes) == (3, 2 * MIB)
    assert counter.close() == [] and source.stopped
    totals = counter.totals()
    assert (totals.events, totals.bytes, totals.refill_bytes, totals.orphan_refill_bytes) == (2, 10 * MIB, 8 * MIB, 0)
    assert totals.dropped_records == 0
    assert last.as_event() == {
        "step": 3,
        "bytes": 2 * MIB,
        "refill_bytes": 0,
        "records": 1,
        "start_ns": 5_000 * MS,
        "end_ns": 5_001 * MS,
        "method": EXACT,
    }


def test_dropped_records_surface_in_the_totals() -> None:
    counter = make_spill_counter("cuda", 64 * MIB, RANGES, cupti_factory=lambda: FakeSource(dropped=17))
    counter.step(1)
    assert counter.totals().dropped_records == 17


def _unavailable() -> FakeSource:
    raise SpillSourceUnavailable("CUPTI ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED (another profiler holds CUPTI)")


def memory(spilled: int) -> dict[str, Any]:
    """The fields of a ``memory`` event whose figures imply ``spilled`` paged bytes."""
    r = reading(spilled)
    return {"gpu_state": "ok", "gpus": [{"index": 0, "used": r.nvml_used, "torch": {"reserved": r.torch_reserved}}]}


def test_counter_estimates_when_cupti_is_unavailable() -> None:
    counter = make_spill_counter(
        "cuda", PAGED, RANGES, cupti_factory=_unavailable, hysteresis_bytes=H, other_bytes=OTHER, clock=Clock()
    )
    assert counter.method == ESTIMATED
    assert counter.reason == (
        "CUPTI unavailable: CUPTI ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED (another profiler holds CUPTI); "
        "estimating from NVML vs torch"
    )
    assert counter.step(1, memory(0)) == []
    assert counter.step(2, None) == []  # no sample: nothing inferred
    (event,) = counter.step(3, memory(300 * MIB))
    assert (event.step, event.bytes, event.method, event.refill_bytes) == (3, 300 * MIB, ESTIMATED, None)
    totals = counter.totals()
    assert (totals.events, totals.bytes, totals.refill_bytes, totals.dropped_records) == (1, 300 * MIB, None, None)


@pytest.mark.parametrize(
    ("visible", "nvml_index"), [(None, 0), ("3", 3), (four_gpus()[2].uuid, 2), ("GPU-1111", 1), ("1,0", 1)]
)
def test_the_estimate_reads_the_gpu_the_run_trains_on(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, nvml_index: int
) -> None:
    """Memory samples from the real NVML adapter (over a fake NVML); cuda:0 is the first visible GPU."""
    fake = install(monkeypatch, FakePynvml(four_gpus()), visible)
    for gpu in fake.gpus:
        gpu.used = RESERVED + OTHER + PAGED  # every paged byte resident
    sampler = MemorySampler(lambda *a, **k: None, 2.0, torch_stats={0: {"reserved": RESERVED}}.get)
    counter = make_spill_counter(
        "cuda", PAGED, RANGES, cupti_factory=_unavailable, hysteresis_bytes=H, other_bytes=OTHER, clock=Clock()
    )
    assert counter.step(1, sampler.sample()) == []

    for index, gpu in enumerate(fake.gpus):
        gpu.used -= 300 * MIB if index == nvml_index else 600 * MIB  # the other GPUs are other jobs'
    (event,) = counter.step(2, sampler.sample())

    assert (event.step, event.bytes, event.method) == (2, 300 * MIB, ESTIMATED)


def test_counter_estimates_when_start_fails_unexpectedly() -> None:
    class Broken(FakeSource):
        def start(self, ranges: Sequence[PagedRange]) -> None:
            raise AttributeError("module 'cupti' has no attribute 'activity_enable'")

    counter = make_spill_counter("cuda", PAGED, RANGES, cupti_factory=Broken)
    assert counter.method == ESTIMATED
    assert counter.reason.startswith("CUPTI unavailable: AttributeError: module 'cupti'")


def test_counter_falls_back_to_the_estimate_when_cupti_fails_mid_run() -> None:
    source = FakeSource(batches=[[rec(0, 4, 0)]], fail_at=2)
    counter = make_spill_counter(
        "cuda", PAGED, RANGES, cupti_factory=lambda: source, hysteresis_bytes=H, other_bytes=OTHER, clock=Clock()
    )
    (exact,) = counter.step(1, memory(0))
    assert exact.method == EXACT
    assert counter.step(2, memory(0)) == []
    assert counter.method == ESTIMATED and source.stopped
    assert counter.reason == "CUPTI failed mid-run: CUPTI_ERROR_UNKNOWN; estimating from NVML vs torch"
    (estimate,) = counter.step(3, memory(200 * MIB))
    assert estimate.method == ESTIMATED
    assert (counter.totals().events, counter.totals().bytes) == (2, 4 * MIB + 200 * MIB)


def test_close_flushes_the_last_burst_once() -> None:
    source = FakeSource(batches=[[], [rec(0, 4, 0)]])
    counter = make_spill_counter("cuda", PAGED, RANGES, cupti_factory=lambda: source)
    assert counter.step(1) == []
    (event,) = counter.close(step=2)
    assert (event.step, event.bytes) == (2, 4 * MIB)
    assert counter.close() == [] and counter.step(3) == []


# --- the CUPTI adapter, against a fake binding -----------------------------------------


class FakeCuptiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class FakeBindings:
    """The slice of ``cupti.cupti`` the adapter uses, with the same names."""

    class Result(IntEnum):
        SUCCESS = 0
        ERROR_NOT_INITIALIZED = 15
        ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED = 39

    class ActivityKind(IntEnum):
        MEMCPY = 1
        UNIFIED_MEMORY_COUNTER = 25

    class ActivityUnifiedMemoryCounterKind(IntEnum):
        BYTES_TRANSFER_HTOD = 1
        BYTES_TRANSFER_DTOH = 2

    class _Entry:
        scope = kind = device_id = enable = 0

    class ActivityUnifiedMemoryCounterConfig:
        def __init__(self, n: int) -> None:
            self.entries = [FakeBindings._Entry() for _ in range(n)]
            self.ptr = 0xC0FFEE

        def __getitem__(self, i: int) -> Any:
            return self.entries[i]

    cuptiError = FakeCuptiError

    def __init__(self, fail: int | None = None) -> None:
        self.fail = fail
        self.queued: list[Any] = []
        self.completed: Any = None
        self.config: Any = None
        self.enabled: set[int] = set()
        self.dropped = 0

    def activity_register_callbacks(self, requested: Any, completed: Any) -> None:
        assert requested() == (8 * MIB, 0)
        self.completed = completed

    def activity_configure_unified_memory_counter(self, ptr: int, count: int) -> None:
        assert ptr == 0xC0FFEE and count == 2

    def activity_enable(self, kind: int) -> None:
        if self.fail is not None:
            raise FakeCuptiError(self.fail)
        self.enabled.add(int(kind))

    def activity_disable(self, kind: int) -> None:
        self.enabled.discard(int(kind))

    def activity_flush_all(self, flag: int) -> None:
        batch, self.queued = self.queued, []
        if batch:
            self.completed(batch)

    def activity_get_num_dropped_records(self, context: int, stream_id: int) -> int:
        count, self.dropped = self.dropped, 0  # CUPTI resets the count on read
        return count


class FakeRecord:
    def __init__(self, **fields: int) -> None:
        self.__dict__.update(fields)


def um(counter_kind: int, flags: int, address: int, value: int, start: int, src: int, dst: int) -> FakeRecord:
    return FakeRecord(
        kind=25, counter_kind=counter_kind, flags=flags, address=address, value=value, start=start, end=start + 5,
        src_id=src, dst_id=dst,
    )  # fmt: skip


def test_adapter_converts_um_records() -> None:
    bindings = FakeBindings()
    source = CuptiUvmSource(device=0, loader=lambda: bindings)
    source.start(RANGES)
    assert 25 in bindings.enabled
    bindings.queued = [
        um(2, 4, BASE, 2 * MIB, 100, src=0, dst=0xFFFFFFFF),  # DtoH eviction from GPU 0
        um(1, 1, BASE, 2 * MIB, 200, src=0xFFFFFFFF, dst=0),  # HtoD user prefetch to GPU 0
        um(4, 1, BASE, 3, 300, src=0, dst=0),  # a GPU page fault: not a transfer
        FakeRecord(kind=1),  # a memcpy record: not ours
    ]
    bindings.dropped = 3
    assert source.drain() == [
        UvmRecord(DTOH, EVICTION, BASE, 2 * MIB, 100, 105, 0),
        UvmRecord(HTOD, "user", BASE, 2 * MIB, 200, 205, 0),
    ]
    bindings.dropped = 2
    assert source.drain() == []
    assert source.dropped() == 5
    source.stop()
    assert 25 not in bindings.enabled
    assert source.drain() == []


def test_adapter_configures_htod_and_dtoh_counters_for_its_device() -> None:
    bindings = FakeBindings()
    configs: list[Any] = []
    original = FakeBindings.ActivityUnifiedMemoryCounterConfig

    def capture(n: int) -> Any:
        configs.append(original(n))
        return configs[-1]

    bindings.ActivityUnifiedMemoryCounterConfig = capture  # type: ignore[assignment,method-assign]
    CuptiUvmSource(device=1, loader=lambda: bindings).start([])
    assert [(e.scope, e.kind, e.device_id, e.enable) for e in configs[0].entries] == [(1, 1, 1, 1), (1, 2, 1, 1)]


def test_adapter_reports_another_profiler_as_unavailable() -> None:
    bindings = FakeBindings(fail=39)
    with pytest.raises(SpillSourceUnavailable) as info:
        CuptiUvmSource(loader=lambda: bindings).start([])
    assert info.value.expected
    assert info.value.reason == (
        "CUPTI ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED "
        "(another profiler holds CUPTI (Nsight Systems, nvprof, torch.profiler...))"
    )
    counter = make_spill_counter("cuda", PAGED, RANGES, cupti_factory=lambda: CuptiUvmSource(loader=lambda: bindings))
    assert counter.method == ESTIMATED and "MULTIPLE_SUBSCRIBERS" in counter.reason


def test_adapter_flags_an_api_mismatch_as_unexpected() -> None:
    class Renamed(FakeBindings):
        ActivityUnifiedMemoryCounterKind = None  # type: ignore[assignment]  # as if the enum were renamed

    with pytest.raises(SpillSourceUnavailable) as info:
        CuptiUvmSource(loader=Renamed).start([])
    assert not info.value.expected and "API mismatch: AttributeError" in info.value.reason


def test_an_unreadable_record_stops_the_exact_count_instead_of_reading_zero() -> None:
    bindings = FakeBindings()
    counter = make_spill_counter(
        "cuda", PAGED, RANGES, cupti_factory=lambda: CuptiUvmSource(loader=lambda: bindings), clock=Clock()
    )
    assert counter.method == EXACT
    bindings.queued = [FakeRecord(kind=25, counter_kind=2, address=BASE, value=MIB, start=1, end=2, src_id=0)]
    assert counter.step(1, memory(0)) == []
    assert counter.method == ESTIMATED
    assert "unreadable CUPTI UM record: AttributeError" in counter.reason and "flags" in counter.reason


def test_adapter_reads_dropped_counts_through_an_out_parameter() -> None:
    import ctypes

    class OutParam(FakeBindings):
        def activity_get_num_dropped_records(self, context: int, stream_id: int, out: int) -> None:  # type: ignore[override]
            ctypes.c_size_t.from_address(out).value = 4

    source = CuptiUvmSource(loader=OutParam)
    source.start([])
    source.drain()
    assert source.dropped() == 4 and source.dropped_note is None


def test_missing_cupti_package_is_an_expected_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupti", None)  # makes `import cupti` raise ImportError
    with pytest.raises(SpillSourceUnavailable) as info:
        load_cupti()
    assert info.value.expected and info.value.reason.startswith("cupti-python is not installed")


def test_importing_the_adapter_does_not_import_cupti() -> None:
    code = "import sys, loratop.trainer.cupti_spills, loratop.core.spills; print('cupti' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the real thing (GPU box only) -----------------------------------------------------


def test_the_spill_probe_runs_and_says_why_it_cannot_on_a_cpu() -> None:
    """The GPU test's child process starts, imports all it needs and answers in one JSON line
    here too, so a broken probe is caught before a borrowed GPU's minutes are spent on it."""
    probe = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "spill_probe.py")], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert json.loads(probe.stdout.splitlines()[-1]) == {"status": "skip", "why": "torch has no CUDA"}


@pytest.mark.gpu
def test_real_cupti_sees_a_paged_buffer_moved_by_hand_and_evicted_by_the_driver() -> None:
    """scripts/spill_probe.py in a child process (a crash in CUDA, CUPTI or bitsandbytes fails
    this test with its output; pytest goes on and prints its summary): moves of a paged buffer
    by hand are cause ``user`` and no spill; a GPU pushed past full evicts it, cause
    ``eviction``, and the classifier counts a spill of its bytes."""
    if not nvidia_gpu_present():
        pytest.skip("no NVIDIA driver or GPU")
    # On a GPU box a missing dependency is a broken setup, not a reason to pass quietly.
    try:
        import cupti  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"cupti-python is missing on a GPU box ({exc}): pip install 'loratop[gpu]'")
    probe = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "spill_probe.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = probe.stdout + probe.stderr
    print(output)
    lines = [line for line in probe.stdout.splitlines() if line.startswith("{")]
    assert probe.returncode == 0 and lines, f"the probe died (exit {probe.returncode}):\n{output[-4000:]}"
    result = json.loads(lines[-1])
    assert result["status"] == "ok", f"the probe could not run on this GPU box: {result}"
    user = result["user_moves"]
    assert user["kinds"] == [DTOH, HTOD] and "user" in user["causes"] and user["devices"] == [0], user
    assert user["spills"] == 0, "moves by hand are not spills"
    assert result["pushed"] > 0, "the driver granted nothing past full: no eviction for plain allocations"
    eviction = result["eviction"]
    assert EVICTION in eviction["causes"] and eviction["eviction_bytes"] > 0, eviction
    assert len(eviction["spills"]) == 1 and eviction["spills"][0]["bytes"] == eviction["eviction_bytes"]
    assert HTOD in result["refill"]["kinds"], "the buffer came back"
