"""Facts read from torch that both a launched run (``train.Run``) and a script's run
(``callback.LoratopCallback``) report the same way: which device trains, and whether an
exception was an out-of-memory error. torch is passed in, never imported here."""

from __future__ import annotations

import platform
from typing import Any


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error: torch's ``OutOfMemoryError``, or a CUDA or host
    allocator's message saying so."""
    name = type(exc).__name__
    text = str(exc).lower()
    return name == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


def device_info(torch: Any, cuda: bool) -> dict[str, Any]:
    """The ``run_started`` event's ``device``: the CPU, or the CUDA devices this process sees."""
    if not cuda:
        return {"kind": "cpu", "name": platform.processor() or platform.machine(), "count": 0}
    count = torch.cuda.device_count()
    return {
        "kind": "cuda",
        "count": count,
        "names": [torch.cuda.get_device_name(i) for i in range(count)],
        "name": torch.cuda.get_device_name(0),
    }
