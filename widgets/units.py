"""The one byte formatter of the dashboard, its widgets and the headless line (binary units).

Standard library only, so every layer above may use it. The pre-flight estimate counts in
decimal GB on purpose (model sizes are quoted so): that is :func:`preflight.estimate.fmt_size`.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024**2
GIB = 1024**3


def fmt_bytes(n: float | None) -> str:
    """``41.2 GiB``, ``340 MiB``, ``256 KiB``, ``512 B``; ``?`` when unknown (never a made-up 0)."""
    if n is None:
        return "?"
    if n >= GIB:
        return f"{n / GIB:.1f} GiB"
    if n >= MIB:
        return f"{n / MIB:.0f} MiB"
    if n >= KIB:
        return f"{n / KIB:.0f} KiB"
    return f"{n:.0f} B"
