"""How a launched run ended when training raised: the status and the error of its
``run_finished`` event, with what was going on when memory ran out and what to try."""

from __future__ import annotations

import traceback
from typing import Any

from loratop.core import events as ev
from loratop.trainer.run_folder import disk_full_message, is_disk_full
from loratop.trainer.torch_facts import is_oom


def failure(exc: BaseException, step: int, watch: Any, last_memory: Any) -> tuple[str, dict[str, Any]]:
    """The status (``disk_full``, ``oom`` or ``failed``) and the error of a run that ``exc`` ended
    at ``step``; the whole traceback goes to ``trainer.log`` (stderr), its tail to the event.

    Args:
        exc: What training raised.
        step: The last step.
        watch: The run's MemoryWatch (``None`` before it was built): the last batch's tokens.
        last_memory: The memory sampler's last sample.
    """
    if is_disk_full(exc):
        return ev.DISK_FULL, {"message": disk_full_message(exc, step), "traceback": []}
    status = ev.OOM if is_oom(exc) else ev.FAILED
    lines = traceback.format_exception(exc)
    tail = "".join(lines).rstrip().splitlines()[-12:]
    error: dict[str, Any] = {"message": f"{type(exc).__name__}: {exc}".strip(), "traceback": tail}
    if status == ev.OOM:
        error.update(oom_post_mortem(step, watch, last_memory))
    traceback.print_exception(exc)  # the whole thing, into trainer.log
    return status, error


def oom_post_mortem(step: int, watch: Any, last_memory: Any) -> dict[str, Any]:
    """What was going on when memory ran out, and what to try."""
    from loratop.core.oom_forecast import OOM_SUGGESTIONS

    return {
        "step": step,
        "batch_tokens": watch.recorder.last_tokens if watch else None,
        "last_memory": last_memory,
        "suggestions": list(OOM_SUGGESTIONS),
    }


__all__ = ["failure", "oom_post_mortem"]
