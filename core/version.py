"""loratop's installed version, looked up on use: ``importlib.metadata`` costs a dashboard's
start ~40 ms (``benchmarks/startup.py``), so nothing calls this at import time."""

from __future__ import annotations


def loratop_version() -> str:
    """The installed distribution's version; ``0+unknown`` for a source tree never installed."""
    from importlib import metadata

    try:
        return metadata.version("loratop")
    except metadata.PackageNotFoundError:
        return "0+unknown"
