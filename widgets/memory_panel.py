"""GPU and host memory at a glance, from one ``memory`` event.

:func:`memory_lines` turns a sample into Rich lines that fit a given width (pure, testable
without an app); :class:`MemoryPanel` renders them at its own width.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import RenderableType
from rich.text import Text
from textual.content import Content
from textual.widget import Widget

from loratop.widgets.units import GIB, fmt_bytes

__all__ = ["MemoryPanel", "memory_lines", "rank_lines"]


MIN_BAR = 10
"""A bar never gets narrower than this many cells."""
WARN_FRACTION = 0.80
"""At or above this fraction of a device in use, its bar turns yellow."""
DANGER_FRACTION = 0.92
"""At or above this fraction, red: the next long batch may not fit."""

_NAME_PREFIXES = ("NVIDIA ", "GeForce ", "Tesla ", "Quadro ")
_MAX_NAME = 12
# torch allocator figure -> its label, from roomiest to tightest.
_TORCH_NAMES = (
    ("allocated", ("alloc", "alloc", "alloc")),
    ("reserved", ("reserved", "rsv", "rsv")),
    ("peak", ("peak", "peak", "max")),
)


def _format_together(values: list[int | float], separator: str) -> str:
    """``41.2/139.8 GiB`` when every value is in GiB, else each with its own unit."""
    if all(v >= GIB for v in values):
        return separator.join(f"{v / GIB:.1f}" for v in values) + " GiB"
    return separator.join(fmt_bytes(v) for v in values)


def _number(value: Any) -> int | float | None:
    """A byte count from the sample, or None when missing or not a sane number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        return None
    return value


def _bar_style(fraction: float) -> str:
    if fraction >= DANGER_FRACTION:
        return "red"
    if fraction >= WARN_FRACTION:
        return "yellow"
    return "green"


def _bar(fraction: float, width: int) -> Text:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    bar = Text("█" * filled, style=_bar_style(fraction))
    bar.append("░" * (width - filled), style="dim")
    return bar


def _short_gpu_name(name: str, limit: int) -> str:
    """``H200`` from ``NVIDIA H200``; cut to ``limit`` cells, or dropped where a stub would be noise."""
    for prefix in _NAME_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
    name = name.strip()
    if len(name) <= limit:
        return name
    return name[: limit - 1] + "…" if limit >= 6 else ""


def _fit(text: Text, width: int) -> Text:
    """The line cut to ``width`` cells with an ellipsis, so it never wraps."""
    if text.cell_len > width:
        text.truncate(width, overflow="ellipsis")
    return text


def _first_fitting(candidates: list[str], width: int) -> Text:
    """The first (longest, clearest) wording that fits; else the last one cut to fit."""
    for candidate in candidates:
        if Text(candidate).cell_len <= width:
            return Text(candidate)
    return _fit(Text(candidates[-1]), width)


def _usage_line(label: str, used: int | float | None, total: int | float | None, width: int) -> Text:
    """``label ██████░░░░ used/total GiB``; the bar takes what the label and figures leave."""
    if used is None or not total:
        return _fit(Text(f"{label}  n/a"), width)
    figures = _format_together([used, total], "/")
    bar_width = max(MIN_BAR, width - len(label) - len(figures) - 4)
    line = Text(f"{label}  ")
    line.append_text(_bar(used / total, bar_width))
    line.append(f"  {figures}")
    return _fit(line, width)


def _gpu_lines(gpu: Mapping[str, Any], width: int) -> list[Text]:
    index = gpu.get("index", "?")
    used, total = _number(gpu.get("used")), _number(gpu.get("total"))
    figures = _format_together([used, total], "/") if used is not None and total else "n/a"
    # Room left for the name once the tag, a minimum bar and the figures are placed.
    tag = f"gpu{index}"
    name_room = min(_MAX_NAME, width - len(tag) - 1 - 2 - MIN_BAR - 2 - len(figures))
    name = _short_gpu_name(str(gpu.get("name") or ""), name_room)
    label = f"{tag} {name}" if name else tag
    lines = [_usage_line(label, used, total, width)]

    torch_figures = gpu.get("torch")
    if isinstance(torch_figures, Mapping):
        parts = [
            (names, value) for key, names in _TORCH_NAMES if (value := _number(torch_figures.get(key))) is not None
        ]
        if parts:
            if all(value >= GIB for _, value in parts):
                shown = [(names, f"{value / GIB:.1f}") for names, value in parts]
                unit = " GiB"
            else:
                shown = [(names, fmt_bytes(value)) for names, value in parts]
                unit = ""
            roomy, tight, tighter = (
                separator.join(f"{names[level]} {number}" for names, number in shown)
                for level, separator in ((0, "  "), (1, " "), (2, " "))
            )
            candidates = [f"torch {roomy}{unit}", f"torch {tight}{unit}", f"torch {tighter}{unit}", f"{tighter}{unit}"]
            line = _first_fitting(candidates, width)
            line.stylize("dim")
            lines.append(line)
    return lines


def _host_line(host: Any, width: int) -> Text:
    """``host RSS 1.8 GiB of 23.5 GiB``: how much the trainer process holds of the machine's RAM."""
    if not isinstance(host, Mapping) or (rss := _number(host.get("rss"))) is None:
        return _fit(Text("host RSS n/a"), width)
    total = _number(host.get("total"))
    if not total:
        return _fit(Text(f"host RSS {fmt_bytes(rss)}"), width)
    return _first_fitting(
        [f"host RSS {fmt_bytes(rss)} of {fmt_bytes(total)}", f"host {_format_together([rss, total], '/')}"],
        width,
    )


def memory_lines(sample: Mapping[str, Any] | None, width: int, ended: bool = False) -> list[Text]:
    """The memory panel's lines for one ``memory`` event, each at most ``width`` cells.

    Per GPU: a usage bar (green below 80 %, yellow below 92 %, red above) with used/total,
    then torch's allocator figures when the sample has them; then the trainer's host RSS.
    Without an NVIDIA GPU, the host's bar instead; on an NVML error, the error and the host.
    A figure missing from the sample is shown as ``n/a`` or left out, never as 0.

    Args:
        sample: A ``memory`` event (or its fields), or None before the first one.
        width: Cells available per line; bars shrink to fit, down to 10 cells.
        ended: The run is over (finished, or its trainer gone): without a sample, none will come.

    Returns:
        One Rich Text per line.
    """
    width = max(width, 1)
    if sample is None:
        said = "memory: none sampled (the run ended first)" if ended else "memory: waiting for the first sample"
        return [_fit(Text(said, style="dim"), width)]
    host = sample.get("host")
    state = sample.get("gpu_state")
    gpus = sample.get("gpus") or []

    if state == "no_nvidia_gpu":
        lines = [_first_fitting(["no NVIDIA GPU — showing host memory", "no NVIDIA GPU"], width)]
        lines[0].stylize("dim")
        if isinstance(host, Mapping):
            lines.append(_usage_line("host RSS", _number(host.get("rss")), _number(host.get("total")), width))
        else:
            lines.append(_fit(Text("host RSS n/a"), width))
        return lines

    if state == "nvml_error":
        note = str(sample.get("gpu_note") or "NVML error")
        return [_fit(Text(f"GPU n/a: {note}", style="yellow"), width), _host_line(host, width)]

    lines = []
    for gpu in gpus:
        if isinstance(gpu, Mapping):
            lines.extend(_gpu_lines(gpu, width))
    if not lines:
        lines.append(_fit(Text("GPU: none in this sample", style="dim"), width))
    lines.append(_host_line(host, width))
    return lines


MAX_RANK_ROWS = 4
"""Rank rows shown at most (the worst always among them); the rest are counted."""


def rank_lines(ranks: Mapping[str, Any], width: int, max_rows: int = MAX_RANK_ROWS) -> list[Text]:
    """One line per rank (``node:local rank``, its GPU's bar, or its RSS on CPU), the worst
    rank marked ``◀``, from a ``ranks`` event; past ``max_rows`` ranks, the rest are counted."""
    width = max(width, 1)
    rows = [r for r in ranks.get("ranks") or [] if isinstance(r, Mapping)]
    worst = ranks.get("worst")
    size = ranks.get("world_size") or len(rows)
    on_gpu = any(isinstance(r.get("gpu"), Mapping) for r in rows)
    shown = list(range(len(rows)))
    if len(rows) > max_rows:
        keep = set(range(max_rows - 1)) | ({worst} if isinstance(worst, int) else {max_rows - 1})
        shown = sorted(keep)[:max_rows]
    head = f"{size} ranks" + ("" if on_gpu else " (CPU: host RSS each)")
    if isinstance(worst, int) and 0 <= worst < len(rows):
        head += f" · worst {rows[worst].get('node')}:{rows[worst].get('local_rank')}"
    lines = [_fit(Text(head, style="dim"), width)]
    for i in shown:
        row = rows[i]
        mark = " ◀" if i == worst else ""
        label = f"{row.get('node', '?')}:{row.get('local_rank', '?')}"
        gpu = row.get("gpu")
        if isinstance(gpu, Mapping):
            used, total = _number(gpu.get("used")), _number(gpu.get("total"))
            line = _usage_line(f"{label} gpu{gpu.get('index', '?')}", used, total, width - len(mark))
        else:
            rss = _number(row.get("rss"))
            line = Text(f"{label} rss {fmt_bytes(rss) if rss is not None else 'n/a'}")
        line.append(mark, style="bold")
        lines.append(_fit(line, width))
    if len(shown) < len(rows):
        lines.append(_fit(Text(f"… {len(rows) - len(shown)} more rank(s)", style="dim"), width))
    return lines


class MemoryPanel(Widget):
    """GPU bars, torch allocator figures and host RSS from the latest ``memory`` event.

    Call :meth:`update` with each new sample (or None); it repaints only when the sample changed.
    """

    DEFAULT_CSS = """
    MemoryPanel {
        height: auto;
    }
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
        disabled: bool = False,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._sample: Mapping[str, Any] | None = None
        self._ranks: Mapping[str, Any] | None = None
        self._ended = False

    def update(
        self, sample: Mapping[str, Any] | None, ranks: Mapping[str, Any] | None = None, ended: bool = False
    ) -> None:
        """Show a new ``memory`` sample.

        Args:
            sample: The latest ``memory`` event (extra keys such as ``seq`` are ignored), or None.
            ranks: The latest ``ranks`` event of a run of several ranks: one row per rank
                then, in place of this process's GPUs.
            ended: The run is over: without a sample, the panel says none will come.
        """
        if sample == self._sample and ranks == self._ranks and ended == self._ended:
            return
        self._sample, self._ranks, self._ended = sample, ranks, ended
        # The full NVML error can be longer than the panel; the tooltip keeps all of it (as
        # Content: a str tooltip would be read as markup).
        if sample is not None and sample.get("gpu_state") == "nvml_error":
            self.tooltip = Content(str(sample.get("gpu_note") or ""))
        else:
            self.tooltip = None
        self.refresh(layout=True)

    def render(self) -> RenderableType:
        width = self.content_size.width or 38
        if self._ranks is not None:
            lines = rank_lines(self._ranks, width)
        else:
            lines = memory_lines(self._sample, width, self._ended)
        return Text("\n", no_wrap=True).join(lines)
