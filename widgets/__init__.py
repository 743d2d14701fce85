"""Reusable Textual widgets (charts, gauges, counters); they import only textual and rich."""

from __future__ import annotations

from loratop.widgets.compare_chart import CompareChart, Series
from loratop.widgets.key_footer import KeyFooter
from loratop.widgets.loss_chart import LossChart
from loratop.widgets.memory_panel import MemoryPanel

__all__ = ["CompareChart", "KeyFooter", "LossChart", "MemoryPanel", "Series"]
