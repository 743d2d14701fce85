"""Paged-optimizer spill counting: exact from CUPTI records, estimated from NVML, or n/a.

bitsandbytes keeps large optimizer state in ``cudaMallocManaged`` buffers; when the GPU
runs short, the driver evicts their pages to host memory and faults them back later.
bitsandbytes counts none of it. This module turns the evidence into spill events behind
one interface, :class:`SpillCounter`, built by :func:`make_spill_counter`:

- *exact*: CUPTI unified-memory counter records (:class:`UvmRecord`, produced by the
  adapter in :mod:`trainer.cupti_spills`) go through :class:`SpillClassifier`. Only
  device-to-host bytes whose migration cause is eviction and that overlap a paged
  buffer count; records closer together than a gap form one event.
- *estimated*: without CUPTI, :class:`SpillEstimator` infers the non-resident paged
  bytes from NVML device-used minus torch reserved, with hysteresis. Labelled as an
  estimate everywhere.
- *n/a*: a CPU run, or nothing is paged.

Standard library only: the classifier and the estimator are pure logic, tested with
synthetic streams; CUPTI itself is injected as a :class:`SpillSource`.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from loratop.core.gpu_devices import row_for_cuda

MIB = 1024 * 1024

EXACT = "exact"
ESTIMATED = "estimated"
NOT_APPLICABLE = "n/a"

DTOH = "DtoH"
HTOD = "HtoD"
EVICTION = "eviction"
COHERENCE = "coherence"
PREFETCH = "prefetch"

DEFAULT_GAP_NS = 100_000_000
"""Records closer together than this (100 ms) belong to one spill event."""
DEFAULT_OTHER_BYTES = 512 * MIB
"""Device memory that is neither torch's nor paged (CUDA context, cuBLAS handles...)."""


@dataclass(frozen=True)
class PagedRange:
    """One paged buffer's virtual address range ``[start, start + size)`` on a device."""

    start: int
    size: int
    device: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class UvmRecord:
    """A CUPTI unified-memory counter record in neutral form (no CUPTI types)."""

    kind: str
    """``"DtoH"``, ``"HtoD"`` or another counter kind's name."""
    cause: str
    """Migration cause: ``"eviction"``, ``"coherence"``, ``"prefetch"``, ``"user"``, ``"page_fault"``..."""
    address: int
    """Virtual base address of the pages transferred."""
    bytes: int
    """Bytes transferred."""
    start_ns: int
    end_ns: int
    device: int
    """The GPU involved: the source of a DtoH transfer, the destination of an HtoD one."""


@dataclass(frozen=True)
class SpillEvent:
    """One spill: a burst of evictions of paged optimizer state to host memory."""

    step: int | None
    """The optimizer step in which the burst was first seen."""
    bytes: int
    """Paged bytes moved device-to-host (exact) or newly non-resident (estimated)."""
    refill_bytes: int | None
    """Paged bytes moved back host-to-device while the burst was open; ``None`` when
    estimated (NVML cannot tell a refill from anything else)."""
    records: int | None
    """CUPTI eviction records in the burst; ``None`` when estimated."""
    start_ns: int
    end_ns: int
    method: str
    """``"exact"`` or ``"estimated"``."""

    def as_event(self) -> dict[str, Any]:
        """The fields of a ``spill`` event."""
        return asdict(self)


@dataclass(frozen=True)
class SpillTotals:
    """Running totals. Counts are ``None`` where the method cannot know them (never a made-up zero)."""

    method: str
    reason: str
    events: int | None
    bytes: int | None
    refill_bytes: int | None
    orphan_refill_bytes: int | None
    """Host-to-device bytes into paged buffers while no spill burst was open (exact only):
    typically bitsandbytes prefetching state evicted during an earlier, already closed burst."""
    dropped_records: int | None
    """CUPTI records lost for want of buffer space; above zero, exact counts are lower bounds."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MemoryReading:
    """What the estimator needs from one memory sample of one GPU."""

    nvml_used: int
    torch_reserved: int


def paged_ranges(tensors: Iterable[Any], default_device: int = 0) -> list[PagedRange]:
    """Address ranges of bitsandbytes' paged buffers (``GlobalPageManager.paged_tensors``).

    Duck-typed so this module never imports torch: each tensor gives ``data_ptr()``,
    ``numel()`` and ``element_size()``. bitsandbytes builds paged buffers as CPU tensors
    over managed memory (``torch.frombuffer``) and records the GPU in ``page_deviceid``.
    """
    ranges = []
    for tensor in tensors:
        size = int(tensor.numel()) * int(tensor.element_size())
        if size <= 0:
            continue
        device = getattr(tensor, "page_deviceid", None)
        if device is None:
            device = getattr(getattr(tensor, "device", None), "index", None)
        ranges.append(PagedRange(int(tensor.data_ptr()), size, default_device if device is None else int(device)))
    return ranges


def reading_from_memory(fields: Mapping[str, Any], device: int) -> MemoryReading | None:
    """Pick one GPU's NVML used and torch reserved out of a ``memory`` event's fields.

    Args:
        fields: The event's fields.
        device: Torch's ordinal of the GPU (``cuda:<device>``), matched against each row's
            ``cuda_index``, not NVML's index: they differ under ``CUDA_VISIBLE_DEVICES``.

    Returns:
        ``None`` when the sample lacks either figure (no NVIDIA GPU, torch stats not yet set).
    """
    gpu = row_for_cuda(fields.get("gpus"), device)
    if gpu is None:
        return None
    torch_figures = gpu.get("torch") or {}
    used, reserved = gpu.get("used"), torch_figures.get("reserved")
    if used is None or reserved is None:
        return None
    return MemoryReading(int(used), int(reserved))


class _Cluster:
    """An open burst of eviction records."""

    def __init__(self, record: UvmRecord, nbytes: int, step: int | None) -> None:
        self.step = step
        self.bytes = nbytes
        self.refill_bytes = 0
        self.records = 1
        self.start_ns = record.start_ns
        self.end_ns = max(record.end_ns, record.start_ns)

    def add(self, record: UvmRecord, nbytes: int) -> None:
        self.bytes += nbytes
        self.records += 1
        self.start_ns = min(self.start_ns, record.start_ns)
        self.end_ns = max(self.end_ns, record.end_ns, record.start_ns)


class SpillClassifier:
    """Turns unified-memory records into spill events.

    Rules:

    - Spill bytes: device-to-host records with cause ``eviction``, on this device, counted
      by their overlap with the paged ranges only (a record straddling two ranges counts
      both overlaps; bytes outside every range count nothing). Coherence-cause transfers
      (the CPU touching a page) are not spills.
    - Clusters: eviction records form one event while each starts no more than ``gap_ns``
      after the cluster's last end. A cluster closes when a later eviction record starts
      beyond the gap, or at :meth:`flush` (each optimizer step boundary).
    - Refills: host-to-device records into paged ranges, whatever their cause, add to the
      open cluster's ``refill_bytes`` (they do not extend or close it: bitsandbytes brings
      state back with ``cudaMemPrefetchAsync`` at optimizer time, often more than a gap
      after the evictions of the forward/backward pass). Coherence and prefetch causes are
      included, because a GPU fault on an evicted page (cause coherence) and the driver's
      speculative migration (cause prefetch) are refills too. With no cluster open, they
      go to ``orphan_refill_bytes`` rather than to some later, unrelated event.
    - Records within a batch are sorted by start time before clustering.

    Args:
        gap_ns: Largest gap between records of one event.
        device: The GPU whose records count.
        refill_causes: Causes of host-to-device records counted as refills; all when ``None``.
    """

    def __init__(
        self,
        gap_ns: int = DEFAULT_GAP_NS,
        device: int = 0,
        refill_causes: Collection[str] | None = None,
    ) -> None:
        if gap_ns < 0:
            raise ValueError(f"gap_ns must be >= 0, got {gap_ns}")
        self.gap_ns = gap_ns
        self.device = device
        self.refill_causes = None if refill_causes is None else frozenset(refill_causes)
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._open: _Cluster | None = None
        self.events = 0
        self.bytes = 0
        self.refill_bytes = 0
        self.orphan_refill_bytes = 0
        self.records = 0

    def set_ranges(self, ranges: Iterable[PagedRange]) -> None:
        """Set the paged buffers; ranges on other devices are dropped, overlaps merged."""
        mine = sorted((r.start, r.end) for r in ranges if r.device == self.device and r.size > 0)
        starts: list[int] = []
        ends: list[int] = []
        for start, end in mine:
            if ends and start <= ends[-1]:  # overlapping or adjacent: one range, so no byte counts twice
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        self._starts, self._ends = starts, ends

    @property
    def range_count(self) -> int:
        return len(self._starts)

    def overlap_bytes(self, address: int, size: int) -> int:
        """Bytes of ``[address, address + size)`` that fall inside the paged ranges."""
        if size <= 0 or not self._starts:
            return 0
        stop = address + size
        i = max(bisect_right(self._starts, address) - 1, 0)
        total = 0
        while i < len(self._starts) and self._starts[i] < stop:
            total += max(0, min(self._ends[i], stop) - max(self._starts[i], address))
            i += 1
        return total

    def feed(self, records: Iterable[UvmRecord], step: int | None) -> list[SpillEvent]:
        """Classify a batch of records; return the spill events this batch completed."""
        done: list[SpillEvent] = []
        for record in sorted(records, key=lambda r: (r.start_ns, r.end_ns)):
            if record.device != self.device or record.bytes <= 0:
                continue
            if record.kind == DTOH and record.cause == EVICTION:
                nbytes = self.overlap_bytes(record.address, record.bytes)
                if not nbytes:
                    continue
                cluster = self._open
                if cluster is not None and record.start_ns - cluster.end_ns > self.gap_ns:
                    done.append(self._close(step))
                    cluster = None
                if cluster is None:
                    self._open = _Cluster(record, nbytes, step)
                else:
                    cluster.add(record, nbytes)
            elif record.kind == HTOD and (self.refill_causes is None or record.cause in self.refill_causes):
                nbytes = self.overlap_bytes(record.address, record.bytes)
                if not nbytes:
                    continue
                if self._open is not None:
                    self._open.refill_bytes += nbytes
                else:
                    self.orphan_refill_bytes += nbytes
        return done

    def flush(self, step: int | None) -> list[SpillEvent]:
        """Close the open cluster, if any (call at each optimizer step boundary and at the end)."""
        return [self._close(step)] if self._open is not None else []

    def _close(self, step: int | None) -> SpillEvent:
        cluster = self._open
        assert cluster is not None
        self._open = None
        event = SpillEvent(
            step=cluster.step if cluster.step is not None else step,
            bytes=cluster.bytes,
            refill_bytes=cluster.refill_bytes,
            records=cluster.records,
            start_ns=cluster.start_ns,
            end_ns=cluster.end_ns,
            method=EXACT,
        )
        self.events += 1
        self.bytes += cluster.bytes
        self.refill_bytes += cluster.refill_bytes
        self.records += cluster.records
        return event


class SpillEstimator:
    """Estimates spills from NVML device-used vs torch reserved vs paged bytes.

    Paged buffers are invisible to torch's allocator but NVML counts their resident
    pages, so resident paged ≈ NVML used − torch reserved − other, clamped to
    ``[0, paged_bytes]``, and spilled = paged_bytes − resident. NVML counts every
    process on the GPU: another process's memory reads as resident paged state and
    hides spills. Hence an *estimate*.

    Hysteresis (a dead band around a reference level, initially 0): an event fires when
    the spilled amount rises more than ``hysteresis_bytes`` above the level, carrying the
    rise, and the level moves up to it. The level moves down (re-arms) only when the
    spilled amount falls more than ``hysteresis_bytes`` below it. Noise inside the band
    never fires; a staircase of real spills fires once per stair.

    Args:
        hysteresis_bytes: Width of the dead band (> 0).
        paged_bytes: Total bytes of paged optimizer buffers.
        other_bytes: Device memory that is neither torch's nor paged (CUDA context etc.).
        clock: Monotonic nanoseconds, for the events' times.
    """

    def __init__(
        self,
        hysteresis_bytes: int,
        paged_bytes: int,
        other_bytes: int = DEFAULT_OTHER_BYTES,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if hysteresis_bytes <= 0:
            raise ValueError(f"hysteresis_bytes must be > 0, got {hysteresis_bytes}")
        self.hysteresis_bytes = hysteresis_bytes
        self.paged_bytes = max(0, paged_bytes)
        self.other_bytes = other_bytes
        self._clock = clock
        self.level = 0
        self._last_ns: int | None = None
        self.events = 0
        self.bytes = 0

    def spilled(self, reading: MemoryReading) -> int:
        """Paged bytes estimated not resident on the GPU."""
        resident = reading.nvml_used - reading.torch_reserved - self.other_bytes
        resident = min(max(resident, 0), self.paged_bytes)
        return self.paged_bytes - resident

    def update(self, reading: MemoryReading, step: int | None) -> SpillEvent | None:
        """Take one reading; return a spill event when the spilled amount jumped."""
        now = self._clock()
        since = self._last_ns if self._last_ns is not None else now
        self._last_ns = now
        spilled = self.spilled(reading)
        if spilled > self.level + self.hysteresis_bytes:
            rise = spilled - self.level
            self.level = spilled
            self.events += 1
            self.bytes += rise
            return SpillEvent(step, rise, None, None, since, now, ESTIMATED)
        if spilled < self.level - self.hysteresis_bytes:
            self.level = spilled
        return None


class SpillSource(Protocol):
    """Where exact records come from: the CUPTI adapter, or a fake in tests."""

    def start(self, ranges: Sequence[PagedRange]) -> None:
        """Begin collecting; raise :class:`SpillSourceUnavailable` if it cannot."""
        ...

    def drain(self) -> list[UvmRecord]:
        """Every record collected since the last drain (flushing buffers first)."""
        ...

    def dropped(self) -> int:
        """Records lost so far (cumulative)."""
        ...

    def stop(self) -> None:
        """Stop collecting; safe to call twice."""
        ...


class SpillSourceUnavailable(Exception):
    """The exact source cannot run here; ``reason`` says why, in words.

    Args:
        reason: Why, for the user (shown after "CUPTI unavailable: ").
        expected: ``True`` for a property of the machine (no package, unsupported device,
            another profiler attached); ``False`` for a surprise such as an API mismatch
            in the adapter, which a GPU check should treat as a failure.
    """

    def __init__(self, reason: str, expected: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expected = expected


def default_hysteresis(paged_bytes: int) -> int:
    """A tenth of the paged bytes, kept within [16 MiB, 256 MiB]."""
    return min(256 * MIB, max(16 * MIB, paged_bytes // 10))


class SpillCounter:
    """The one interface the trainer uses; build it with :func:`make_spill_counter`.

    Call :meth:`step` at every optimizer step boundary and :meth:`close` at the end;
    emit a ``spill`` event for each :class:`SpillEvent` they return.
    """

    def __init__(
        self,
        method: str,
        reason: str,
        *,
        device: int = 0,
        paged_bytes: int = 0,
        classifier: SpillClassifier | None = None,
        source: SpillSource | None = None,
        estimator: SpillEstimator | None = None,
        hysteresis_bytes: int | None = None,
        other_bytes: int = DEFAULT_OTHER_BYTES,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.method = method
        """``"exact"``, ``"estimated"`` or ``"n/a"``; may turn estimated if CUPTI fails mid-run."""
        self.reason = reason
        """Why this method, in words."""
        self.device = device
        self.paged_bytes = paged_bytes
        self._classifier = classifier
        self._source = source
        self._estimator = estimator
        self._hysteresis = hysteresis_bytes if hysteresis_bytes is not None else default_hysteresis(paged_bytes)
        self._other = other_bytes
        self._clock = clock
        self._dropped = 0
        self._closed = False
        # events and bytes of an exact phase survive a mid-run fallback to the estimate
        self._exact_events = 0
        self._exact_bytes = 0

    def set_ranges(self, ranges: Iterable[PagedRange]) -> None:
        """Replace the paged buffers' ranges (exact method only; others ignore it)."""
        if self._classifier is not None:
            self._classifier.set_ranges(ranges)

    def step(self, step: int, memory_sample: Mapping[str, Any] | MemoryReading | None = None) -> list[SpillEvent]:
        """At an optimizer step boundary: the spill events completed during the step.

        Args:
            step: The optimizer step that just ended.
            memory_sample: The latest ``memory`` event's fields (or a :class:`MemoryReading`);
                the estimated method needs it, the others ignore it.
        """
        if self._closed or self.method == NOT_APPLICABLE:
            return []
        events: list[SpillEvent] = []
        if self.method == EXACT:
            events = self._collect_exact(step, final=False)
            if self.method == EXACT:
                return events
        return events + events_from_estimate(self._estimator, memory_sample, self.device, step)

    def close(self, step: int | None = None) -> list[SpillEvent]:
        """At the end of the run: drain, close the open burst and stop the source."""
        if self._closed:
            return []
        events: list[SpillEvent] = []
        if self.method == EXACT:
            events = self._collect_exact(step, final=True)
        self._closed = True
        return events

    def totals(self) -> SpillTotals:
        """Running totals so far."""
        if self.method == NOT_APPLICABLE:
            return SpillTotals(self.method, self.reason, None, None, None, None, None)
        if self.method == EXACT:
            c = self._classifier
            assert c is not None
            return SpillTotals(
                self.method, self.reason, c.events, c.bytes, c.refill_bytes, c.orphan_refill_bytes, self._dropped
            )
        e = self._estimator
        assert e is not None
        return SpillTotals(
            self.method,
            self.reason,
            self._exact_events + e.events,
            self._exact_bytes + e.bytes,
            None,
            None,
            self._dropped if self._source is not None else None,
        )

    def _collect_exact(self, step: int | None, final: bool) -> list[SpillEvent]:
        source, classifier = self._source, self._classifier
        assert source is not None and classifier is not None
        try:
            records = source.drain()
            self._dropped = max(self._dropped, int(source.dropped()))
            if final:
                source.stop()
        except Exception as exc:  # CUPTI failing mid-run must cost the count, not the run
            events = classifier.flush(step)
            self._fall_back(f"CUPTI failed mid-run: {exc}")
            return events
        return classifier.feed(records, step) + classifier.flush(step)

    def _fall_back(self, why: str) -> None:
        classifier = self._classifier
        assert classifier is not None
        self._exact_events, self._exact_bytes = classifier.events, classifier.bytes
        try:
            assert self._source is not None
            self._source.stop()
        except Exception:  # already broken; stopping is best effort
            pass
        self.method = ESTIMATED
        self.reason = f"{why}; estimating from NVML vs torch"
        self._estimator = SpillEstimator(self._hysteresis, self.paged_bytes, self._other, self._clock)


def events_from_estimate(
    estimator: SpillEstimator | None,
    memory_sample: Mapping[str, Any] | MemoryReading | None,
    device: int,
    step: int | None,
) -> list[SpillEvent]:
    """Feed one memory sample to the estimator; a missing sample or figure yields nothing."""
    if estimator is None or memory_sample is None:
        return []
    reading = memory_sample if isinstance(memory_sample, MemoryReading) else reading_from_memory(memory_sample, device)
    if reading is None:
        return []
    event = estimator.update(reading, step)
    return [event] if event is not None else []


def make_spill_counter(
    device_kind: str,
    paged_bytes: int,
    ranges: Sequence[PagedRange] = (),
    *,
    device: int = 0,
    paged_optimizer: bool = True,
    cupti_factory: Callable[[], SpillSource] | None = None,
    gap_ns: int = DEFAULT_GAP_NS,
    hysteresis_bytes: int | None = None,
    other_bytes: int = DEFAULT_OTHER_BYTES,
    clock: Callable[[], int] = time.monotonic_ns,
) -> SpillCounter:
    """Build the spill counter with the most honest method available.

    Args:
        device_kind: ``"cuda"`` or ``"cpu"`` (anything but cuda is n/a).
        paged_bytes: Total bytes of the paged optimizer buffers.
        ranges: Their address ranges (see :func:`paged_ranges`).
        device: The GPU that holds them.
        paged_optimizer: ``False`` when the configured optimizer is not a paged one.
        cupti_factory: Returns the exact source (the trainer passes the real CUPTI adapter,
            :class:`trainer.cupti_spills.CuptiUvmSource`); ``None``: estimate.
        gap_ns: Largest gap between records of one spill event.
        hysteresis_bytes: Dead band of the estimate; see :func:`default_hysteresis`.
        other_bytes: Non-torch, non-paged device memory assumed by the estimate.
        clock: Monotonic nanoseconds (tests freeze it).
    """
    if device_kind != "cuda":
        kind = "CPU" if device_kind == "cpu" else device_kind
        return SpillCounter(NOT_APPLICABLE, f"{kind} run: nothing is paged", device=device)
    if not paged_optimizer:
        return SpillCounter(
            NOT_APPLICABLE, "nothing is paged: the optimizer is not a paged one (e.g. paged_adamw_8bit)", device=device
        )
    if paged_bytes <= 0:
        return SpillCounter(
            NOT_APPLICABLE,
            "nothing is paged: every optimizer state tensor is below 1e5 elements",
            device=device,
        )
    common: dict[str, Any] = {
        "device": device,
        "paged_bytes": paged_bytes,
        "hysteresis_bytes": hysteresis_bytes,
        "other_bytes": other_bytes,
        "clock": clock,
    }
    try:
        if cupti_factory is None:
            raise SpillSourceUnavailable("no exact source was given")
        source = cupti_factory()
        source.start(list(ranges))
    except SpillSourceUnavailable as exc:
        why = exc.reason
    except Exception as exc:  # an adapter surprise still must not cost the run
        why = f"{type(exc).__name__}: {exc}"
    else:
        classifier = SpillClassifier(gap_ns=gap_ns, device=device)
        classifier.set_ranges(ranges)
        mine = [r for r in ranges if r.device == device]
        reason = (
            f"CUPTI unified-memory counters: evictions overlapping {len(mine)} paged buffers "
            f"({sum(r.size for r in mine) / MIB:.1f} MiB)"
        )
        return SpillCounter(EXACT, reason, classifier=classifier, source=source, **common)
    hysteresis = hysteresis_bytes if hysteresis_bytes is not None else default_hysteresis(paged_bytes)
    estimator = SpillEstimator(hysteresis, paged_bytes, other_bytes, clock)
    return SpillCounter(
        ESTIMATED, f"CUPTI unavailable: {why}; estimating from NVML vs torch", estimator=estimator, **common
    )
