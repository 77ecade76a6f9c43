"""Charts as inline SVG, rendered on the server.

No JavaScript and no chart library: the dashboard must work on a deployment
without internet access, and a page that is complete when it arrives is also
what a screenshot or a test sees.  Each function returns :class:`markupsafe.Markup`
ready to drop into a template; every label is escaped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from markupsafe import Markup, escape

# Colour-blind-safe palette (Okabe-Ito), in the order series are drawn.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")

# viewBox units; a chart card is about this wide on a laptop, so 12-unit text stays legible.
WIDTH, HEIGHT = 440, 230
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 52, 12, 12, 28
CHAR_WIDTH = 6.5  # average width of a tick label character, in viewBox units


@dataclass(frozen=True)
class Series:
    """One named line (or bar stack layer): a value per category, None for a gap."""

    name: str
    values: Sequence[Optional[float]]


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _divisions(top: float) -> int:
    """Grid lines that fall on round numbers: 4 for a 2 x 10^n top, else 5."""
    mantissa = top / 10.0 ** math.floor(math.log10(top))
    return 4 if abs(mantissa - 2) < 1e-9 else 5


def _nice_max(value: float) -> float:
    """The smallest 1/2/2.5/5 x 10^n that is >= value (a readable axis top)."""
    if value <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if base * factor >= value * (1 - 1e-9):
            return base * factor
    return base * 10


def _fmt(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return f"{value:.3g}"


def _frame(categories: Sequence[str], y_max: float, y_label: Callable[[float], str],
           title: str) -> list[str]:
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    steps = _divisions(y_max)
    for i in range(steps + 1):
        y = MARGIN_TOP + plot_h - plot_h * i / steps
        value = y_max * i / steps
        parts.append(f'<line class="grid" x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{escape(y_label(value))}</text>")
    # As many category labels as fit side by side, evenly spaced, never overlapping.
    n = len(categories)
    widest = max((len(name) for name in categories), default=1) * CHAR_WIDTH + 10
    fit = max(1, int(plot_w // widest))
    every = max(1, -(-n // fit))
    for i, name in enumerate(categories):
        if i % every:
            continue
        x = MARGIN_LEFT + plot_w * (i + 0.5) / max(n, 1)
        half = len(name) * CHAR_WIDTH / 2
        x = min(max(x, half + 2), WIDTH - half - 2)  # keep the label inside the picture
        parts.append(f'<text class="tick" x="{x:.1f}" y="{HEIGHT - MARGIN_BOTTOM + 16}" text-anchor="middle">'
                     f"{escape(name)}</text>")
    return parts


def _legend(series: Sequence[Series]) -> str:
    items = "".join(
        # An SVG fill, not a style attribute: the page's CSP allows no inline style.
        f'<span class="legend-item"><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true">'
        f'<rect width="10" height="10" rx="2" fill="{colour(i)}"/></svg>'
        f"{escape(s.name)}</span>"
        for i, s in enumerate(series)
    )
    return f'<div class="legend">{items}</div>'


def empty_chart(message: str) -> Markup:
    return Markup(f'<div class="chart-empty">{escape(message)}</div>')


def stacked_bars(categories: Sequence[str], series: Sequence[Series], title: str,
                 y_label: Callable[[float], str] = _fmt, empty: str = "No data yet") -> Markup:
    """One bar per category, stacked by series (e.g. alerts per day per metric type)."""
    totals = [sum((s.values[i] or 0.0) for s in series) for i in range(len(categories))]
    if not categories or not series or max(totals, default=0) <= 0:
        return empty_chart(empty)
    y_max = _nice_max(max(totals))
    parts = _frame(categories, y_max, y_label, title)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    slot = plot_w / len(categories)
    bar_w = max(2.0, slot * 0.7)
    for i, category in enumerate(categories):
        base = 0.0
        x = MARGIN_LEFT + slot * i + (slot - bar_w) / 2
        for k, s in enumerate(series):
            value = s.values[i] or 0.0
            if value <= 0:
                continue
            h = plot_h * value / y_max
            y = MARGIN_TOP + plot_h - plot_h * base / y_max - h
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{colour(k)}"><title>{escape(category)} {escape(s.name)}: {escape(_fmt(value))}</title></rect>'
            )
            base += value
    parts.append("</svg>")
    return Markup("".join(parts) + _legend(series))


def lines(categories: Sequence[str], series: Sequence[Series], title: str,
          y_label: Callable[[float], str] = _fmt, y_max: Optional[float] = None,
          empty: str = "No data yet") -> Markup:
    """One polyline per series over the categories (time buckets); None breaks the line."""
    present = [v for s in series for v in s.values if v is not None]
    if not categories or not present:
        return empty_chart(empty)
    top = y_max if y_max is not None else _nice_max(max(present))
    parts = _frame(categories, top, y_label, title)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    n = len(categories)
    for k, s in enumerate(series):
        segment: list[str] = []
        segments: list[list[str]] = []
        for i, value in enumerate(s.values):
            if value is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            x = MARGIN_LEFT + plot_w * (i + 0.5) / n
            y = MARGIN_TOP + plot_h - plot_h * min(value, top) / top
            segment.append(f"{x:.1f},{y:.1f}")
            parts.append(
                f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour(k)}">'
                f"<title>{escape(categories[i])} {escape(s.name)}: {escape(y_label(value))}</title></circle>"
            )
        if segment:
            segments.append(segment)
        for points in segments:
            if len(points) > 1:
                parts.append(f'<polyline class="line" fill="none" stroke="{colour(k)}" '
                             f'points="{" ".join(points)}"/>')
    parts.append("</svg>")
    return Markup("".join(parts) + _legend(series))
