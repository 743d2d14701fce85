"""What a model load is doing, as phase messages: downloads and weight loading, i of n.

A 7B model takes minutes to fetch and load; without this the dashboard shows one frozen
"loading" line for all of it. transformers and huggingface_hub report their progress
through tqdm bars: :class:`ReportedProgress` is a tqdm bar that draws nothing and instead
hands a short line ("Loading weights 120/291", "model-00001-of-00004.safetensors 1.2 GB of
4.9 GB") to a callback, at most once a second per bar (tqdm's own ``mininterval``) and
once at the end. :func:`reporting_load_progress` installs it for the time of a load.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from tqdm.std import tqdm

REPORT_INTERVAL_S = 1.0
"""Least time between two lines of one bar."""


def describe(desc: str, n: float, total: float | None, unit: str) -> str:
    """One line for a bar's state: ``Loading weights 120/291`` or ``x.safetensors 1.2 GB of 4.9 GB (24%)``."""
    desc = (desc or "").strip().rstrip(":") or "progress"
    if unit == "B":
        done = _bytes(n)
        if total:
            return f"{desc} {done} of {_bytes(total)} ({100 * n / total:.0f}%)"
        return f"{desc} {done}"
    if total:
        return f"{desc} {int(n)}/{int(total)}"
    return f"{desc} {int(n)}"


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


class ReportedProgress(tqdm):  # tqdm ships no type hints
    """A tqdm bar that reports through :attr:`report` instead of drawing on a terminal."""

    report: Callable[[str], None] = staticmethod(lambda line: None)
    """Set on a subclass by :func:`progress_class`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
        kwargs["disable"] = False
        kwargs["mininterval"] = REPORT_INTERVAL_S
        kwargs.pop("name", None)  # huggingface_hub's own keyword, not tqdm's
        self._last_line = ""
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        d = self.format_dict
        line = describe(d.get("prefix") or "", d.get("n", 0), d.get("total"), d.get("unit", "it"))
        if line != self._last_line:
            self._last_line = line
            with contextlib.suppress(Exception):  # a progress line must never break a load
                type(self).report(line)
        return True

    def close(self) -> None:
        fp = getattr(self, "fp", None)
        try:
            super().close()
        finally:
            if fp is not None and not fp.closed:
                fp.close()


def progress_class(report: Callable[[str], None]) -> type[ReportedProgress]:
    """A :class:`ReportedProgress` subclass whose bars call ``report`` with their lines."""
    return type("Reported", (ReportedProgress,), {"report": staticmethod(report)})


@contextlib.contextmanager
def reporting_load_progress(report: Callable[[str], None]) -> Iterator[type[ReportedProgress]]:
    """Route transformers' progress bars to ``report`` while the block runs.

    Yields the bar class, to pass as ``from_pretrained(..., tqdm_class=...)`` for the
    hub's download bars. Without ``transformers.utils.logging.set_tqdm_hook`` (older
    releases) only the downloads are reported.
    """
    bar = progress_class(report)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - the trainer always has transformers
        yield bar
        return
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:
        yield bar
        return
    previous = set_hook(lambda factory, args, kwargs: bar(*args, **kwargs))
    try:
        yield bar
    finally:
        set_hook(previous)
