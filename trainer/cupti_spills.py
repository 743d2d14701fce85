"""The exact spill source: CUPTI unified-memory counter records through ``cupti-python``.

:class:`CuptiUvmSource` enables ``UNIFIED_MEMORY_COUNTER`` activity records for
host-to-device and device-to-host transfers, converts each record to a neutral
:class:`~core.spills.UvmRecord` inside CUPTI's buffer-completed callback (the record
objects may not outlive it) and hands them over on :meth:`~CuptiUvmSource.drain`.
Every failure to start becomes one :class:`~core.spills.SpillSourceUnavailable`
with the reason in words, which :func:`~core.spills.make_spill_counter` turns into
the estimated method. ``cupti`` is imported only inside :meth:`~CuptiUvmSource.start`,
so importing this module costs nothing and works on any machine.

Checked against NVIDIA's docs (CUPTI C API, cupti-python bindings) and NVIDIA's
cupti-python samples, not yet run on a GPU. UNVERIFIED, to check on a GPU box
(``pytest -m gpu tests/test_spills.py``):

1. The bindings live in ``cupti.cupti`` (``from cupti import cupti``); the NVIDIA
   samples import it so. Fallback: ``import cupti`` itself.
2. ``ActivityUnifiedMemoryCounterConfig(n)`` is an array whose ``cfg[i]`` is a writable
   view with ``scope``, ``kind``, ``device_id``, ``enable``, and whose ``.ptr`` is what
   ``activity_configure_unified_memory_counter(ptr, n)`` takes (the samples do this).
   Whether that call raises ``cuptiError`` or returns a ``Result`` on failure: both handled.
3. UM record attributes: ``kind``, ``counter_kind``, ``value``, ``address``, ``start``,
   ``end``, ``src_id``, ``dst_id`` appear in NVIDIA's sample; ``flags`` (the migration
   cause for HtoD/DtoH, per the C docs) is assumed to be exposed under that name.
   A missing attribute is not silently read as "no spill": it makes :meth:`drain` raise,
   and the counter falls back to the estimate with the error as its reason.
4. The ids in ``src_id``/``dst_id`` are CUDA device ordinals (the ones torch uses under
   the same ``CUDA_VISIBLE_DEVICES``); the CPU is ``0xFFFFFFFF``.
5. ``record.address`` equals the managed pointer bitsandbytes hands out (the tensor's
   ``data_ptr()``), so the overlap test against paged ranges works.
6. ``activity_get_num_dropped_records``: tried as ``(context, stream_id) -> int``, then as
   ``(context, stream_id, out_address)`` writing a ``size_t`` (public code disagrees).
   Queried for context 0 / stream 0 (the global queue, where UM records are assumed to
   land); the count is assumed to reset on each read, so it is accumulated.
7. ``activity_flush_all(1)`` (forced) at each step boundary is safe mid-run and delivers
   the step's UM records synchronously, before :meth:`drain` returns.
8. Enabling UM counters after the CUDA context exists and after the paged buffers were
   allocated (the trainer starts the source at the first optimizer step) still yields
   records for those buffers.
9. Errors surface as ``cupti.cuptiError`` with ``.status`` (a ``cupti.Result`` value), as
   in NVIDIA's samples; another profiler (Nsight Systems, torch.profiler's Kineto) shows
   up as ``ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED`` from one of the calls in ``start``.
10. ``activity_register_callbacks`` may be called once per process: one source per process.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Sequence
from typing import Any

from loratop.core.spills import DTOH, HTOD, PagedRange, SpillSourceUnavailable, UvmRecord

COUNTER_KINDS = {
    1: HTOD,
    2: DTOH,
    3: "cpu_page_fault",
    4: "gpu_page_fault",
    5: "thrashing",
    6: "throttling",
    7: "remote_map",
    8: "DtoD",
}
"""``CUpti_ActivityUnifiedMemoryCounterKind`` values (cupti_activity.h)."""

MIGRATION_CAUSES = {0: "unknown", 1: "user", 2: "coherence", 3: "prefetch", 4: "eviction", 5: "access_counters"}
"""``CUpti_ActivityUnifiedMemoryMigrationCause``, carried in ``flags`` of HtoD/DtoH records."""

CPU_DEVICE_ID = 0xFFFFFFFF
"""``CUPTI_UNIFIED_MEMORY_CPU_DEVICE_ID``."""
SCOPE_PROCESS_SINGLE_DEVICE = 1
"""``CUPTI_ACTIVITY_UNIFIED_MEMORY_COUNTER_SCOPE_PROCESS_SINGLE_DEVICE`` (deprecated, still required)."""
BUFFER_BYTES = 8 * 1024 * 1024

_HINTS = (
    ("MULTIPLE_SUBSCRIBERS", "another profiler holds CUPTI (Nsight Systems, nvprof, torch.profiler...)"),
    ("UM_PROFILING", "unified-memory profiling is not supported on this device or setup"),
    ("NOT_INITIALIZED", "the CUDA driver is not initialised"),
    ("INSUFFICIENT_PRIVILEGES", "profiling is restricted to admin users on this machine"),
    ("VIRTUALIZED", "profiling is not allowed on this virtual GPU"),
    ("CONFIDENTIAL_COMPUTING", "profiling is not allowed in confidential-computing mode"),
    ("MIG_DEVICE", "not supported on a MIG slice"),
    ("CMP_DEVICE", "not supported on a crypto-mining processor"),
)


def load_cupti() -> Any:
    """The ``cupti-python`` bindings module, or :class:`SpillSourceUnavailable`."""
    try:
        from cupti import cupti as bindings
    except ImportError:
        try:
            import cupti as bindings  # older layouts may export the bindings at the top
        except ImportError as exc:
            raise SpillSourceUnavailable(f"cupti-python is not installed ({exc.msg})") from exc
    except Exception as exc:  # the package is there but libcupti or the driver is not
        raise SpillSourceUnavailable(f"cupti-python failed to load: {type(exc).__name__}: {exc}") from exc
    if not hasattr(bindings, "activity_enable"):
        raise SpillSourceUnavailable("the installed cupti package has no activity API", expected=False)
    return bindings


def unavailable_from(bindings: Any, exc: BaseException) -> SpillSourceUnavailable:
    """One clear reason for a failure while starting CUPTI."""
    status = getattr(exc, "status", None)
    if status is not None:
        name = _result_name(bindings, status)
        hint = next((text for key, text in _HINTS if key in name), None)
        return SpillSourceUnavailable(f"CUPTI {name}" + (f" ({hint})" if hint else ""))
    if isinstance(exc, (AttributeError, TypeError, ValueError)):
        return SpillSourceUnavailable(f"cupti-python API mismatch: {type(exc).__name__}: {exc}", expected=False)
    return SpillSourceUnavailable(f"{type(exc).__name__}: {exc}", expected=False)


def _result_name(bindings: Any, status: Any) -> str:
    try:
        return str(bindings.Result(status).name)
    except Exception:
        return str(getattr(status, "name", status))


def _field(record: Any, *names: str) -> int:
    for name in names:
        value = getattr(record, name, None)
        if value is not None:
            return int(value)
    raise AttributeError(f"{type(record).__name__} has none of {names}")


class CuptiUvmSource:
    """Unified-memory transfer records from CUPTI, as :class:`~core.spills.UvmRecord`.

    Implements :class:`~core.spills.SpillSource`. One per process: CUPTI's activity
    callbacks are process-wide.

    Args:
        device: The GPU whose UM counters are configured.
        buffer_bytes: Size of each activity buffer handed to CUPTI.
        forced_flush: Flush incomplete buffers on :meth:`drain`, so a step's records
            arrive at its boundary rather than when a buffer fills.
        loader: Returns the bindings module (tests may inject a fake).
    """

    def __init__(
        self,
        device: int = 0,
        buffer_bytes: int = BUFFER_BYTES,
        forced_flush: bool = True,
        loader: Callable[[], Any] = load_cupti,
    ) -> None:
        self.device = device
        self._buffer_bytes = buffer_bytes
        self._forced_flush = forced_flush
        self._loader = loader
        self._lock = threading.Lock()
        self._pending: list[UvmRecord] = []
        self._dropped = 0
        self._error: str | None = None
        self._bindings: Any = None
        self._um_kind = -1
        self._started = False
        self._stopped = False
        self.dropped_note: str | None = None
        """Set when CUPTI's dropped-record count cannot be read."""

    def start(self, ranges: Sequence[PagedRange]) -> None:
        """Configure and enable UM counter records; :class:`SpillSourceUnavailable` if CUPTI cannot."""
        del ranges  # the classifier filters by address; CUPTI has no address filter
        if self._started:
            return
        bindings = self._loader()
        try:
            kinds = bindings.ActivityUnifiedMemoryCounterKind
            counters = [kinds.BYTES_TRANSFER_HTOD, kinds.BYTES_TRANSFER_DTOH]
            self._um_kind = int(bindings.ActivityKind.UNIFIED_MEMORY_COUNTER)
            bindings.activity_register_callbacks(self._buffer_requested, self._buffer_completed)
            config = bindings.ActivityUnifiedMemoryCounterConfig(len(counters))
            for index, counter in enumerate(counters):
                entry = config[index]
                entry.scope = SCOPE_PROCESS_SINGLE_DEVICE
                entry.kind = int(counter)
                entry.device_id = self.device
                entry.enable = 1
            result = bindings.activity_configure_unified_memory_counter(config.ptr, len(counters))
            if result is not None and int(result) != 0:
                raise SpillSourceUnavailable(f"CUPTI {_result_name(bindings, result)} configuring UM counters")
            bindings.activity_enable(bindings.ActivityKind.UNIFIED_MEMORY_COUNTER)
        except SpillSourceUnavailable:
            raise
        except Exception as exc:
            raise unavailable_from(bindings, exc) from exc
        self._bindings = bindings
        self._started = True

    def drain(self) -> list[UvmRecord]:
        """Every UM transfer record delivered since the last drain.

        Raises:
            RuntimeError: A record could not be converted (an API mismatch); counting
                on would report made-up zeros.
        """
        if not self._started or self._stopped:
            return []
        self._bindings.activity_flush_all(1 if self._forced_flush else 0)
        self._read_dropped()
        with self._lock:
            records, self._pending = self._pending, []
            error = self._error
        if error is not None:
            raise RuntimeError(f"unreadable CUPTI UM record: {error}")
        return records

    def dropped(self) -> int:
        """Records CUPTI dropped so far (cumulative, as of the last drain)."""
        return self._dropped

    def stop(self) -> None:
        """Disable UM records (best effort, idempotent); later drains return nothing."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        try:
            self._bindings.activity_disable(self._bindings.ActivityKind.UNIFIED_MEMORY_COUNTER)
            self._bindings.activity_flush_all(1)  # hand CUPTI's buffers back; their records are ignored
        except Exception:  # nothing useful to do about a failing teardown
            pass

    def _buffer_requested(self) -> tuple[int, int]:
        return self._buffer_bytes, 0  # 0: as many records as fit

    def _buffer_completed(self, activities: Sequence[Any]) -> None:
        # Runs on a CUPTI thread, called from C: never raise, remember the first error.
        if self._stopped:
            return
        converted: list[UvmRecord] = []
        error: str | None = None
        for activity in activities:
            try:
                record = self._convert(activity)
            except Exception as exc:
                error = error or f"{type(exc).__name__}: {exc}"
                continue
            if record is not None:
                converted.append(record)
        with self._lock:
            self._pending.extend(converted)
            if error is not None and self._error is None:
                self._error = error

    def _convert(self, activity: Any) -> UvmRecord | None:
        if int(activity.kind) != self._um_kind:
            return None
        kind = COUNTER_KINDS.get(_field(activity, "counter_kind", "counterKind"), "other")
        if kind not in (HTOD, DTOH):
            return None
        flags = _field(activity, "flags")
        device = _field(activity, "src_id", "srcId") if kind == DTOH else _field(activity, "dst_id", "dstId")
        start = _field(activity, "start")
        return UvmRecord(
            kind=kind,
            cause=MIGRATION_CAUSES.get(flags, f"cause_{flags}"),
            address=_field(activity, "address"),
            bytes=_field(activity, "value"),
            start_ns=start,
            end_ns=max(start, _field(activity, "end")),
            device=device,
        )

    def _read_dropped(self) -> None:
        bindings = self._bindings
        try:
            try:
                count = int(bindings.activity_get_num_dropped_records(0, 0))
            except TypeError:  # binding that writes a size_t at an address instead of returning it
                out = ctypes.c_size_t(0)
                bindings.activity_get_num_dropped_records(0, 0, ctypes.addressof(out))
                count = int(out.value)
        except Exception as exc:
            self.dropped_note = f"dropped-record count unreadable: {type(exc).__name__}: {exc}"
            return
        self._dropped += count
