"""On a GPU: does CUPTI see a paged buffer leave the GPU, and tell a user move from an eviction?

    python scripts/spill_probe.py        # prints what it saw, then one JSON line; exit 0 unless it broke

Run as a child process by ``tests/test_spills.py`` (``pytest -m gpu``), so a crash in CUDA,
CUPTI or bitsandbytes fails that one test with this output instead of ending pytest. Three
moves of one bitsandbytes paged buffer (``get_paged``: managed memory, as the paged optimizer
allocates its state), all through cuda-bindings, none through bitsandbytes' C layer (its
``prefetch_tensor(..., to_cpu=True)`` ends the process on CUDA 13):

1. to the GPU and back to the host with ``cudaMemPrefetchAsync``: CUPTI records with cause
   ``user``, which the classifier must not count as a spill;
2. to the GPU, then the GPU filled to full with plain allocations and pushed past it
   (:class:`gpu_pressure.Squeeze`): the driver evicts the buffer, CUPTI records cause
   ``eviction``, and the classifier must count a spill of the buffer's bytes;
3. the ballast given back and the buffer prefetched to the GPU again (the refill).

The JSON line: ``status`` (``ok``, ``skip`` with ``why`` when CUPTI cannot run here),
the records seen per move, the eviction bytes overlapping the buffer and the spill events.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO, REPO / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from gpu_pressure import MIB, CudaRuntime, Squeeze  # noqa: E402

from loratop.core.spills import (  # noqa: E402
    EVICTION,
    SpillClassifier,
    SpillSourceUnavailable,
    UvmRecord,
    paged_ranges,
)
from loratop.trainer.cupti_spills import CuptiUvmSource  # noqa: E402

BUFFER_BYTES = 32 * MIB


def _show(move: str, records: list[UvmRecord], classifier: SpillClassifier) -> dict[str, Any]:
    touching = [r for r in records if classifier.overlap_bytes(r.address, r.bytes)]
    print(f"{move}: {len(records)} UM records, {len(touching)} touching the paged buffer", flush=True)
    for record in touching[:6]:
        print(f"  {record}", flush=True)
    return {
        "records": len(records),
        "touching": len(touching),
        "kinds": sorted({r.kind for r in touching}),
        "causes": sorted({r.cause for r in touching}),
        "devices": sorted({r.device for r in touching}),
        "bytes": sum(classifier.overlap_bytes(r.address, r.bytes) for r in touching),
    }


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"status": "skip", "why": "torch has no CUDA"}))
        return 0
    torch.cuda.init()
    source = CuptiUvmSource(device=0)
    try:
        source.start([])
    except SpillSourceUnavailable as exc:
        print(json.dumps({"status": "skip" if exc.expected else "broken", "why": exc.reason}))
        return 0 if exc.expected else 1
    import bitsandbytes.functional as F

    result: dict[str, Any] = {"status": "ok"}
    runtime = CudaRuntime(0)
    buffer = F.get_paged(BUFFER_BYTES // 4, dtype=torch.float32, device=torch.device("cuda", 0))
    pointer, size = buffer.data_ptr(), buffer.numel() * buffer.element_size()
    classifier = SpillClassifier(device=0)
    classifier.set_ranges(paged_ranges([buffer]))
    print(
        f"paged buffer: {size / MIB:.0f} MiB at {pointer:#x}, torch.device of the tensor: {buffer.device}", flush=True
    )
    try:
        source.drain()  # whatever came before
        runtime.prefetch(pointer, size, to_host=False)
        runtime.prefetch(pointer, size, to_host=True)
        moved = source.drain()
        result["user_moves"] = _show("1. prefetched to the GPU and back to the host", moved, classifier)
        result["user_moves"]["spills"] = len(classifier.feed(moved, 1) + classifier.flush(1))

        runtime.prefetch(pointer, size, to_host=False)
        source.drain()
        squeeze = Squeeze(runtime)
        squeeze.fill(keep_free=0)
        pushed = squeeze.push(size)
        result["pushed"] = sum(s for _, s in pushed)
        squeeze.held += pushed
        runtime.synchronize()
        evicted = source.drain()
        squeeze.release_all()
        result["eviction"] = _show("2. the GPU filled and pushed past full", evicted, classifier)
        events = classifier.feed(evicted, 2) + classifier.flush(2)
        result["eviction"]["spills"] = [e.as_event() for e in events]
        result["eviction"]["eviction_bytes"] = sum(
            classifier.overlap_bytes(r.address, r.bytes) for r in evicted if r.cause == EVICTION
        )

        runtime.prefetch(pointer, size, to_host=False)
        result["refill"] = _show("3. the ballast gone, prefetched back to the GPU", source.drain(), classifier)
        result["dropped"] = source.dropped()
    finally:
        source.stop()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
