"""Charts as inline SVG, so the HTML report is one file that needs no script, no network and no plotting library.

A `Chart` has a numeric x and y axis with round ticks, and takes lines, points, horizontal reference lines and
shaded x-bands; `svg()` gives the markup. Colours come from one palette, in series order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def nice_ticks(lo: float, hi: float, count: int = 5, min_step: float = 0.0) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart, at least `min_step`) covering
    [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        hi = lo + 1.0
    raw = max((hi - lo) / max(count, 1), min_step)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t < hi + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _label(v: float) -> str:
    if abs(v) >= 10000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    width: int = 640
    height: int = 320
    y_min: float | None = None  # fixed ends of the y axis (else from the data, starting at 0)
    y_max: float | None = None
    x_integer: bool = False     # x counts things (sessions): ticks on whole numbers only
    _lines: list[tuple[str, list[tuple[float, float]], str, float, bool]] = field(default_factory=list)
    _hlines: list[tuple[float, str, str]] = field(default_factory=list)
    _bands: list[tuple[float, float, str]] = field(default_factory=list)
    _vlines: list[tuple[float, str]] = field(default_factory=list)

    def line(self, label: str, points: list[tuple[float, float]], stroke: str, opacity: float = 1.0,
             markers: bool = False) -> None:
        """A polyline through `points` (sorted by x); `label` "" keeps it out of the legend."""
        self._lines.append((label, [p for p in points if all(map(math.isfinite, p))], stroke, opacity, markers))

    def hline(self, y: float, label: str, stroke: str = "#444") -> None:
        """A dashed reference line across the plot (a target)."""
        self._hlines.append((y, label, stroke))

    def vline(self, x: float, label: str) -> None:
        """A dashed vertical reference line (a target on the x axis)."""
        self._vlines.append((x, label))

    def band(self, x0: float, x1: float, label: str) -> None:
        """A shaded span of x (a step of the run), labelled at its top."""
        self._bands.append((x0, x1, label))

    def _ranges(self) -> tuple[list[float], list[float]]:
        xs = [x for _, pts, *_ in self._lines for x, _ in pts] + [b for band in self._bands for b in band[:2]] \
            + [x for x, _ in self._vlines]
        ys = [y for _, pts, *_ in self._lines for _, y in pts] + [y for y, *_ in self._hlines]
        x_ticks = nice_ticks(min(xs, default=0.0), max(xs, default=1.0), min_step=1.0 if self.x_integer else 0.0)
        y_lo = self.y_min if self.y_min is not None else min(0.0, min(ys, default=0.0))
        y_hi = self.y_max if self.y_max is not None else max(ys, default=1.0)
        y_ticks = nice_ticks(y_lo, y_hi) if self.y_max is None else [
            t for t in nice_ticks(y_lo, y_hi) if t <= self.y_max + 1e-9]
        return x_ticks, y_ticks

    def svg(self) -> str:
        left, right, top, bottom = 64, 16, 34, 46
        legend = [(label, stroke) for label, _, stroke, _, _ in self._lines if label]
        legend_w = 150 if legend else 0
        w, h = self.width, self.height
        pw, ph = w - left - right - legend_w, h - top - bottom
        x_ticks, y_ticks = self._ranges()
        x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
        if self.y_max is not None:
            y1 = self.y_max

        def sx(x: float) -> float:
            return left + (x - x0) / ((x1 - x0) or 1) * pw

        def sy(y: float) -> float:
            return top + ph - (min(max(y, y0), y1) - y0) / ((y1 - y0) or 1) * ph

        out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{w}" height="{h}" '
               f'viewBox="0 0 {w} {h}" role="img" aria-label="{escape(self.title)}">',
               f'<text x="{left}" y="20" class="title">{escape(self.title)}</text>']
        for i, (a, b, label) in enumerate(self._bands):
            out.append(f'<rect x="{sx(a):.1f}" y="{top}" width="{max(0.0, sx(b) - sx(a)):.1f}" height="{ph}" '
                       f'fill="{"#f2f2f2" if i % 2 == 0 else "#e6eef7"}"/>')
            out.append(f'<text x="{(sx(a) + sx(b)) / 2:.1f}" y="{top + ph - 6}" class="band">{escape(label)}</text>')
        for t in y_ticks:
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>')
            out.append(f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" class="ytick">{_label(t)}</text>')
        for t in x_ticks:
            out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 16}" class="xtick">{_label(t)}</text>')
        out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>')
        for y, label, stroke in self._hlines:
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="{stroke}" '
                       'stroke-dasharray="5 4"/>')
            out.append(f'<text x="{left + pw - 4}" y="{sy(y) - 4:.1f}" class="ref">{escape(label)}</text>')
        for x, label in self._vlines:
            out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{top + ph}" stroke="#444" '
                       'stroke-dasharray="5 4"/>')
            out.append(f'<text x="{sx(x) + 4:.1f}" y="{top + ph - 6}" class="vref">{escape(label)}</text>')
        for _, pts, stroke, opacity, markers in self._lines:
            if len(pts) > 1:
                path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
                out.append(f'<polyline points="{path}" fill="none" stroke="{stroke}" stroke-width="1.6" '
                           f'stroke-opacity="{opacity}"/>')
            if markers or len(pts) == 1:
                out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.2" fill="{stroke}" '
                        f'fill-opacity="{opacity}"/>' for x, y in pts]
        out.append(f'<text x="{left + pw / 2:.1f}" y="{h - 8}" class="xlabel">{escape(self.x_label)}</text>')
        out.append(f'<text transform="translate(14,{top + ph / 2:.1f}) rotate(-90)" class="ylabel">'
                   f'{escape(self.y_label)}</text>')
        for i, (label, stroke) in enumerate(legend[:16]):
            ly = top + 8 + i * 16
            out.append(f'<line x1="{w - legend_w + 4}" x2="{w - legend_w + 22}" y1="{ly}" y2="{ly}" '
                       f'stroke="{stroke}" stroke-width="3"/>')
            out.append(f'<text x="{w - legend_w + 28}" y="{ly + 4}" class="legend">{escape(label)}</text>')
        out.append("</svg>")
        return "\n".join(out)


def ecdf(values: list[float]) -> list[tuple[float, float]]:
    """The empirical distribution as a step line: (value, share of values at or below it), in percent."""
    xs = sorted(values)
    n = len(xs)
    out: list[tuple[float, float]] = []
    for i, x in enumerate(xs):
        out += [(x, 100 * i / n), (x, 100 * (i + 1) / n)]
    return out
