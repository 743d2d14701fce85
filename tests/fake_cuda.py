"""A stand-in for the GPU the memory watch reads (CUDA and CUPTI are hardware CI lacks).

:class:`FakeCudaMemory` has :class:`~loratop.trainer.memory_watch.CudaMemory`'s
methods: torch's allocator counters, bitsandbytes' paged buffers and the exact spill source.
Its peak follows the batches the model runs (its own forward hook plays the allocator), as
``base + per_token × tokens``, so a test knows every peak the forecaster should see.
:class:`FakeSpillSource` has the CUPTI adapter's methods and hands out the unified-memory
records a test queues, only when drained (as CUPTI's buffers do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loratop.core.spills import DTOH, EVICTION, PagedRange, SpillSourceUnavailable, UvmRecord
from loratop.trainer.memory_watch import batch_tokens

GIB = 1024**3
MIB = 1024**2
PAGED_BASE = 0x7F00_0000_0000
"""Where the fake paged buffers start."""


@dataclass
class FakePagedBuffer:
    """A paged optimizer buffer as bitsandbytes lists it (``data_ptr``, ``numel``, ``element_size``)."""

    address: int
    size: int
    page_deviceid: int = 0

    def data_ptr(self) -> int:
        return self.address

    def numel(self) -> int:
        return self.size

    def element_size(self) -> int:
        return 1


class FakeSpillSource:
    """CUPTI's unified-memory records, as :class:`~loratop.core.spills.SpillSource` gives them."""

    def __init__(self) -> None:
        self.pending: list[UvmRecord] = []
        self.started = False
        self.stopped = False
        self.drains = 0

    def evict(self, address: int, size: int, at_ns: int, device: int = 0) -> None:
        """The driver evicted ``size`` bytes at ``address`` to the host (a record waits in CUPTI's buffer)."""
        self.pending.append(UvmRecord(DTOH, EVICTION, address, size, at_ns, at_ns + 1000, device))

    def start(self, ranges: Sequence[PagedRange]) -> None:
        self.started = True

    def drain(self) -> list[UvmRecord]:
        self.drains += 1
        records, self.pending = self.pending, []
        return records

    def dropped(self) -> int:
        return 0

    def stop(self) -> None:
        self.stopped = True


class FakeCudaMemory:
    """The watch's GPU, on CPU: peaks from a known function of the tokens the model ran.

    Args:
        base: Peak bytes of a step with an empty batch (weights, optimizer state...).
        per_token: Peak bytes added per padded token of the step's largest micro-batch.
        reserved: Torch's reserved bytes (constant).
        paged: The paged buffers bitsandbytes would list.
        source: The exact spill source; ``None``: CUPTI unavailable (spills estimated).
        device: Torch's ordinal of the GPU.
    """

    def __init__(
        self,
        base: int = 2 * GIB,
        per_token: int = MIB,
        reserved: int = GIB,
        paged: Sequence[FakePagedBuffer] = (),
        source: FakeSpillSource | None = None,
        device: int = 0,
    ) -> None:
        self.device = device
        self.base = base
        self.per_token = per_token
        self.reserved = reserved
        self.paged = list(paged)
        self.source = source
        self.peak = base
        self.resets = 0
        self._handle: Any = None

    def run_on(self, model: Any) -> None:
        """Play the allocator for ``model``: each training forward raises the step's peak."""
        self._handle = model.register_forward_pre_hook(self._forward, with_kwargs=True)

    def _forward(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        tokens = batch_tokens(args, kwargs)
        if module.training and tokens is not None:
            self.peak = max(self.peak, self.base + self.per_token * tokens)

    def reset_peak(self) -> None:
        self.resets += 1
        self.peak = self.base

    def stats(self) -> dict[str, int]:
        return {
            "allocated_bytes.all.peak": self.peak,
            "allocated_bytes.all.current": self.base,
            "reserved_bytes.all.current": self.reserved,
            "num_alloc_retries": 0,
        }

    def paged_tensors(self) -> list[Any]:
        return list(self.paged)

    def spill_source(self) -> Any:
        if self.source is None:
            raise SpillSourceUnavailable("no CUPTI on this fake GPU")
        return self.source
