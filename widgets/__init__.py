"""Reusable Textual widgets (charts, gauges, counters); they import only textual and rich."""
