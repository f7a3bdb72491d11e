"""Inline SVG charts for the dashboard: server-rendered, no script, no assets to fetch.

Every chart is an ``<svg class="chart">`` whose data points are marked (``class="pt"`` circles on
lines, ``class="bar"`` rectangles) with their values in ``data-`` attributes, so a reader and a
test can both see what was drawn; a minute without a value has no point and breaks its line. All
text is escaped.
"""

from __future__ import annotations

from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
# the second and third series dashed, so a line drawn over another (p99 over p95 on a quiet minute) still shows
DASHES = ("", "6 3", "2 3", "", "6 3", "2 3", "", "6 3")
W, H, PAD_L, PAD_B, PAD_T = 560, 180, 48, 22, 10


def _num(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.3g}"


def line_chart(title: str, xs: list[str], series: dict[str, list[float | None]], unit: str = "") -> str:
    """Lines over shared x labels (minutes); per series a polyline for each run of values and a point per
    value. ``None`` is a minute with nothing to show (no request had a latency): a gap, not a zero."""
    top = max((v for ys in series.values() for v in ys if v is not None), default=0.0) or 1.0
    n = max(len(xs), 1)
    step = (W - PAD_L - 8) / max(n - 1, 1)
    y_of = lambda v: PAD_T + (H - PAD_T - PAD_B) * (1 - v / top)  # noqa: E731
    points = sum(1 for ys in series.values() for v in ys if v is not None)
    parts = [f'<svg class="chart line" role="img" aria-label="{escape(title)}" viewBox="0 0 {W} {H}" '
             f'data-points="{points}">']
    for frac in (0, 0.5, 1):
        y = y_of(top * frac)
        parts.append(f'<line x1="{PAD_L}" x2="{W - 4}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">{_num(top * frac)}{escape(unit)}</text>')
    for i, anchor in ((0, "start"), (n // 2, "middle"), (n - 1, "end")):
        if 0 <= i < len(xs) and not (i == n // 2 and i in (0, n - 1)):
            parts.append(f'<text x="{PAD_L + i * step:.1f}" y="{H - 6}" text-anchor="{anchor}">{escape(xs[i])}</text>')
    for k, (name, ys) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        dash = f' stroke-dasharray="{DASHES[k % len(DASHES)]}"' if DASHES[k % len(DASHES)] else ""
        runs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(ys):
            if v is None:
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append((PAD_L + i * step, y_of(v)))
        for run in runs:
            if len(run) > 1:
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="'
                             + " ".join(f"{x:.1f},{y:.1f}" for x, y in run) + '"/>')
        for i, (v, label) in enumerate(zip(ys, xs)):
            if v is None:
                continue
            x, y = PAD_L + i * step, y_of(v)
            parts.append(f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}" '
                         f'data-series="{escape(name)}" data-x="{escape(label)}" data-y="{v:g}">'
                         f'<title>{escape(name)} {escape(label)}: {v:g}{escape(unit)}</title></circle>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key" style="--c:{PALETTE[k % len(PALETTE)]}">{escape(name)}</span>'
                     for k, name in enumerate(series))
    return f'<figure><figcaption>{escape(title)}</figcaption>{"".join(parts)}<div class="legend">{legend}</div></figure>'


def bar_chart(title: str, rows: list[tuple[str, float, str]]) -> str:
    """Horizontal bars: (label, value, the value as shown)."""
    if not rows:
        return f'<figure><figcaption>{escape(title)}</figcaption><p class="empty">nothing yet</p></figure>'
    top = max(v for _, v, _ in rows) or 1.0
    row_h = 22
    h = row_h * len(rows) + 4
    label_w = 150
    parts = [f'<svg class="chart bars" role="img" aria-label="{escape(title)}" viewBox="0 0 {W} {h}" '
             f'data-points="{len(rows)}">']
    for i, (label, v, shown) in enumerate(rows):
        y = 2 + i * row_h
        width = max((W - label_w - 90) * v / top, 1.0)
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(label[:24])}</text>'
                     f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row_h - 6}" '
                     f'fill="{PALETTE[i % len(PALETTE)]}" data-label="{escape(label)}" data-value="{v:g}">'
                     f'<title>{escape(label)}: {escape(shown)}</title></rect>'
                     f'<text x="{label_w + width + 6:.1f}" y="{y + 15}">{escape(shown)}</text>')
    parts.append("</svg>")
    return f'<figure><figcaption>{escape(title)}</figcaption>{"".join(parts)}</figure>'
