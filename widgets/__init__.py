"""Reusable Textual widgets (charts, gauges, counters); they import only textual and rich."""

from __future__ import annotations

from widgets.compare_chart import CompareChart, Series
from widgets.loss_chart import LossChart
from widgets.memory_panel import MemoryPanel

__all__ = ["CompareChart", "LossChart", "MemoryPanel", "Series"]
