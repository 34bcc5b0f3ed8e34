"""The performance chart (docs/performance.svg): grouped bars, one panel per broker.

Hand-written SVG: a few dozen bars do not justify matplotlib (not installed in the dev
environment) as a dependency. Pure: data in, text out; ``tests/bench`` parses what it writes.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from xml.sax.saxutils import escape

WIDTH = 960
PANEL_HEIGHT = 300
PLOT_TOP = 60  # within a panel: title and legend above
PLOT_HEIGHT = 170
LEFT = 70
RIGHT = 20
#: (series key, legend label, fill)
SERIES = (
    ("drain_per_s", "drain/s", "#2f6db5"),
    ("enqueue_per_s", "enqueue/s", "#e39b2d"),
)


@dataclass(frozen=True)
class Group:
    """One system's bars; ``values[key]`` is None where it was not measured."""

    label: str
    values: dict[str, float | None]
    note: str = ""  # under the label: the ratios, or why there are no bars


@dataclass(frozen=True)
class Panel:
    title: str
    groups: list[Group]


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at or above ``value`` (the y axis's top)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value * (1 - 1e-12):
            return step * power
    return 10 * power  # unreachable: step 10 always fits


def short(value: float) -> str:
    """Bar labels: 7,210 -> 7.2k, 840 -> 840."""
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def render(panels: list[Panel], subtitle: str = "") -> str:
    height = 40 + PANEL_HEIGHT * len(panels)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">'
        f"{escape(subtitle)}</text>",
    ]
    for i, panel in enumerate(panels):
        out += _panel(panel, 40 + i * PANEL_HEIGHT)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _panel(panel: Panel, top: float) -> list[str]:
    plot_top, plot_w = top + PLOT_TOP, WIDTH - LEFT - RIGHT
    base = plot_top + PLOT_HEIGHT
    values = [v for g in panel.groups for v in g.values.values() if v is not None]
    y_max = nice_ceiling(max(values, default=1.0))
    out = [
        f'<g class="panel"><text x="{LEFT}" y="{top + 20}" font-size="14" font-weight="bold">'
        f"{escape(panel.title)}</text>"
    ]
    for j, (_, label, fill) in enumerate(SERIES):  # legend
        lx = LEFT + 260 + j * 110
        out.append(f'<rect x="{lx}" y="{top + 10}" width="12" height="12" fill="{fill}"/>')
        out.append(f'<text x="{lx + 16}" y="{top + 21}">{label}</text>')
    for k in range(5):  # grid and y labels
        y = base - PLOT_HEIGHT * k / 4
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#ddd"/><text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{short(y_max * k / 4)}</text>"
        )
    slot = plot_w / max(len(panel.groups), 1)
    bar_w = min(48.0, slot * 0.7 / len(SERIES))
    for g, group in enumerate(panel.groups):
        centre = LEFT + slot * (g + 0.5)
        for j, (key, label, fill) in enumerate(SERIES):
            bar = group.values.get(key)
            x = centre - bar_w * len(SERIES) / 2 + j * bar_w
            if bar is None:
                continue
            h = PLOT_HEIGHT * bar / y_max
            out.append(
                f'<rect class="bar" data-series="{key}" data-value="{bar:.6g}" '
                f'x="{x:.1f}" y="{base - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                f'fill="{fill}"><title>{escape(group.label)} {label}: {bar:,.0f}</title></rect>'
            )
            out.append(
                f'<text x="{x + bar_w / 2 - 1:.1f}" y="{base - h - 4:.1f}" '
                f'text-anchor="middle" font-size="11">{short(bar)}</text>'
            )
        chars = int(slot / 7)  # ~7 px a character at these sizes
        name = textwrap.wrap(group.label, chars) or [""]
        for n, line in enumerate(name):
            out.append(
                f'<text x="{centre:.1f}" y="{base + 18 + 14 * n}" text-anchor="middle" '
                f'font-weight="bold">{escape(line)}</text>'
            )
        lines = [w for part in group.note.splitlines() for w in textwrap.wrap(part, chars)]
        for n, line in enumerate(lines, start=len(name)):
            out.append(
                f'<text class="note" x="{centre:.1f}" y="{base + 20 + 14 * n}" '
                f'text-anchor="middle" font-size="11" fill="#444">{escape(line)}</text>'
            )
    out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{base}" y2="{base}" stroke="#333"/>')
    out.append("</g>")
    return out
