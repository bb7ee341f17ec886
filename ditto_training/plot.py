"""Loss curves as a small standalone SVG (no plotting library needed); a PNG too when matplotlib is installed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def write_svg(path: Path, series: Mapping[str, Sequence[tuple[float, float]]], title: str = "training loss",
              xlabel: str = "step", log_y: bool = True, width: int = 720, height: int = 420) -> Path:
    """Line chart of named (x, y) series; y on a log scale by default (losses span decades)."""
    pts = [(x, y) for s in series.values() for x, y in s if math.isfinite(y) and (y > 0 or not log_y)]
    left, right, top, bottom = 70, 160, 40, 50
    pw, ph = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="24" font-size="15">{title}</text>']
    if pts:
        fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = min(fy(p[1]) for p in pts), max(fy(p[1]) for p in pts)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-3)

        def sx(x: float) -> float:
            return left + (x - x0) / (x1 - x0) * pw

        def sy(y: float) -> float:
            return top + (1 - (fy(y) - y0) / (y1 - y0)) * ph

        out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
        for ty in _ticks(y0, y1):
            y = top + (1 - (ty - y0) / (y1 - y0)) * ph
            label = f"{10 ** ty:.3g}" if log_y else f"{ty:.3g}"
            out.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#888"/>'
                       f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        for tx in _ticks(x0, x1):
            x = sx(tx)
            out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{tx:.4g}</text>')
        out.append(f'<text x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">{xlabel}</text>')
        for i, (name, s) in enumerate(series.items()):
            color = COLORS[i % len(COLORS)]
            good = [(x, y) for x, y in s if math.isfinite(y) and (y > 0 or not log_y)]
            if good:
                path_d = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(good))
                out.append(f'<path d="{path_d}" fill="none" stroke="{color}" stroke-width="1.5"/>')
            ly = top + 14 + 18 * i
            out.append(f'<line x1="{left + pw + 12}" y1="{ly - 4}" x2="{left + pw + 32}" y2="{ly - 4}" '
                       f'stroke="{color}" stroke-width="2"/><text x="{left + pw + 38}" y="{ly}">{name}</text>')
    else:
        out.append(f'<text x="{left}" y="{top + 30}">no data yet</text>')
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out))
    return path


def write_png(path: Path, series: Mapping[str, Sequence[tuple[float, float]]], title: str = "training loss",
              xlabel: str = "step") -> Path | None:
    """The same chart through matplotlib, when it is installed (None otherwise)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, s in series.items():
        if s:
            ax.plot([p[0] for p in s], [p[1] for p in s], label=name)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
