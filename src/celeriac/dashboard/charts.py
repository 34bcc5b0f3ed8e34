"""Charts as inline SVG, drawn on the server: no script library, nothing to build.

:func:`buckets` turns finished tasks into per-interval numbers (pure, tested alone);
:func:`line_chart` draws a few series of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from celeriac import states
from celeriac.dashboard.history import Finished

WIDTH, HEIGHT, PAD = 640, 180, 32
COLOURS = ("#2b7bb9", "#e0a800", "#c0392b", "#6c757d")


@dataclass(frozen=True)
class Buckets:
    start: float
    step: float
    succeeded: list[int]
    failed: list[int]
    p50: list[float | None]
    p95: list[float | None]
    p99: list[float | None]


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0-100) of sorted values."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def buckets(finished: Sequence[Finished], start: float, end: float, count: int) -> Buckets:
    """Finished tasks in ``count`` equal intervals from ``start`` to ``end``: successes and
    failures per interval, and the runtime percentiles of each interval's tasks."""
    step = (end - start) / count
    succeeded, failed = [0] * count, [0] * count
    runtimes: list[list[float]] = [[] for _ in range(count)]
    for f in finished:
        i = int((f.at - start) // step)
        if not 0 <= i < count:
            continue
        if f.state == states.SUCCESS:
            succeeded[i] += 1
        elif f.state == states.FAILURE:
            failed[i] += 1
        if f.runtime is not None:
            runtimes[i].append(f.runtime)
    for r in runtimes:
        r.sort()
    return Buckets(
        start,
        step,
        succeeded,
        failed,
        [percentile(r, 50) for r in runtimes],
        [percentile(r, 95) for r in runtimes],
        [percentile(r, 99) for r in runtimes],
    )


def line_chart(
    title: str, series: dict[str, Sequence[float | None]], unit: str = "", chart_id: str = ""
) -> str:
    """An SVG chart of ``series`` (equal-length lists; None leaves a gap), y from 0."""
    values = [v for s in series.values() for v in s if v is not None]
    top = max(values, default=0.0) or 1.0
    n = max((len(s) for s in series.values()), default=0)
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def point(i: int, v: float) -> str:
        x = PAD + (inner_w * i / max(n - 1, 1))
        y = PAD + inner_h - inner_h * v / top
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<text x="{PAD}" y="18" class="title">{escape(title)}</text>',
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        'class="axis"/>',
        f'<text x="4" y="{PAD + 4}" class="tick">{_fmt(top)}{escape(unit)}</text>',
        f'<text x="4" y="{HEIGHT - PAD}" class="tick">0</text>',
    ]
    for k, (name, data) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        runs: list[list[str]] = [[]]
        for i, v in enumerate(data):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(point(i, v))
        for run in runs:
            if len(run) == 1:
                x, y = run[0].split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2" fill="{colour}"/>')
            elif run:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                    f'points="{" ".join(run)}"/>'
                )
        total = sum(v for v in data if v is not None)
        parts.append(
            f'<text x="{PAD + 150 * k}" y="{HEIGHT - 8}" fill="{colour}" class="legend" '
            f'data-series="{escape(name)}" data-total="{_fmt(total)}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _fmt(v: float) -> str:
    if v >= 100 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.3g}"
