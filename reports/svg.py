"""Small inline-SVG charts (no plotting dependency; every label escaped)."""
from __future__ import annotations

import html
import math

from corpora.hygiene import visible


def _e(s) -> str:
    """Escaped for SVG text/attributes; control and format characters (Cc, Cf, Zl, Zp) made visible."""
    return html.escape(visible(s), quote=True)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    span = hi - lo
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 2.5, 5, 10):
        if span / (step * m) <= n:
            step *= m
            break
    first = math.ceil(lo / step) * step
    out, v = [], first
    while v <= hi + step * 1e-9:
        out.append(round(v, 10))
        v += step
    return out


def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:g}G"
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e3:
        return f"{v / 1e3:g}k"
    if a < 0.01:
        return f"{v:.0e}"
    return f"{v:g}"


def line_chart(series: list[dict], title: str, xlabel: str, ylabel: str, width: int = 640, height: int = 320,
               hline: tuple[float, str] | None = None, vline: tuple[float, str] | None = None) -> str:
    """``series``: [{"name", "points": [(x, y)], "color", "dash": bool}]."""
    ml, mr, mt, mb = 64, 16, 34, 44
    pw, ph = width - ml - mr, height - mt - mb
    xs = [p[0] for s in series for p in s["points"]] or [0, 1]
    ys = [p[1] for s in series for p in s["points"]] or [0, 1]
    if hline:
        ys.append(hline[0])
    x0, x1 = 0.0, max(max(xs), 1)
    y0, y1 = 0.0, max(max(ys) * 1.05, 1)

    def X(x):
        return ml + (x - x0) / (x1 - x0) * pw

    def Y(y):
        return mt + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{_e(title)}" class="chart">',
           f'<text x="{width / 2}" y="20" text-anchor="middle" class="ct">{_e(title)}</text>']
    for t in _nice_ticks(y0, y1):
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="grid"/>'
                   f'<text x="{ml - 6}" y="{Y(t) + 4:.1f}" text-anchor="end" class="tick">{_e(_fmt_tick(t))}</text>')
    for t in _nice_ticks(x0, x1):
        out.append(f'<line x1="{X(t):.1f}" x2="{X(t):.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" class="axis"/>'
                   f'<text x="{X(t):.1f}" y="{mt + ph + 16}" text-anchor="middle" class="tick">{_e(_fmt_tick(t))}</text>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" class="axis"/>'
               f'<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}" class="axis"/>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" class="lab">{_e(xlabel)}</text>'
               f'<text transform="translate(14 {mt + ph / 2}) rotate(-90)" text-anchor="middle" class="lab">'
               f'{_e(ylabel)}</text>')
    if hline:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(hline[0]):.1f}" y2="{Y(hline[0]):.1f}" '
                   f'stroke="#999" stroke-dasharray="2 3"/>'
                   f'<text x="{ml + pw - 4}" y="{Y(hline[0]) - 4:.1f}" text-anchor="end" class="tick">{_e(hline[1])}</text>')
    if vline:
        out.append(f'<line x1="{X(vline[0]):.1f}" x2="{X(vline[0]):.1f}" y1="{mt}" y2="{mt + ph}" '
                   f'stroke="#bbb" stroke-dasharray="4 3"/>'
                   f'<text x="{X(vline[0]) + 4:.1f}" y="{mt + ph - 6}" class="tick">{_e(vline[1])}</text>')
    ly = mt + 8
    for s in series:
        pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in s["points"])
        dash = ' stroke-dasharray="6 4"' if s.get("dash") else ""
        if pts:
            out.append(f'<polyline fill="none" stroke="{_e(s["color"])}" stroke-width="2"{dash} points="{pts}"/>')
        out.append(f'<line x1="{ml + 10}" x2="{ml + 34}" y1="{ly}" y2="{ly}" stroke="{_e(s["color"])}" '
                   f'stroke-width="2"{dash}/><text x="{ml + 40}" y="{ly + 4}" class="tick">{_e(s["name"])}</text>')
        ly += 16
    out.append("</svg>")
    return "".join(out)


def loglog_roc_chart(curves: list[dict], title: str, floor: float = 1e-3, width: int = 520,
                     height: int = 420) -> str:
    """ROC curves on log-log axes (Carlini et al. 2022): x = FPR, y = TPR, both from ``floor`` to 1
    (a value below ``floor``, e.g. 0, is drawn at ``floor``); ``curves``: [{"name", "points":
    [(fpr, tpr)], "color"}]; the chance line TPR = FPR dashed."""
    ml, mr, mt, mb = 58, 16, 34, 44
    pw, ph = width - ml - mr, height - mt - mb
    lo = math.log10(floor)

    def X(v):
        return ml + (math.log10(max(v, floor)) - lo) / -lo * pw

    def Y(v):
        return mt + ph - (math.log10(max(v, floor)) - lo) / -lo * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{_e(title)}" class="chart">',
           f'<text x="{width / 2}" y="20" text-anchor="middle" class="ct">{_e(title)}</text>']
    for e in range(math.floor(lo), 1):
        v = 10.0 ** e
        if v < floor * (1 - 1e-9):
            continue
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" class="grid"/>'
                   f'<text x="{ml - 6}" y="{Y(v) + 4:.1f}" text-anchor="end" class="tick">{_e(f"{v:g}")}</text>'
                   f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{mt}" y2="{mt + ph}" class="grid"/>'
                   f'<text x="{X(v):.1f}" y="{mt + ph + 16}" text-anchor="middle" class="tick">{_e(f"{v:g}")}</text>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" class="axis"/>'
               f'<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}" class="axis"/>'
               f'<line x1="{X(floor):.1f}" y1="{Y(floor):.1f}" x2="{X(1):.1f}" y2="{Y(1):.1f}" stroke="#999" '
               f'stroke-dasharray="3 3"/>'
               f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" class="lab">false-positive rate</text>'
               f'<text transform="translate(14 {mt + ph / 2}) rotate(-90)" text-anchor="middle" class="lab">'
               f'true-positive rate</text>')
    ly = mt + 8
    for c in curves:
        pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in c["points"])
        if pts:
            out.append(f'<polyline fill="none" stroke="{_e(c["color"])}" stroke-width="2" points="{pts}"/>')
        out.append(f'<line x1="{ml + pw - 150}" x2="{ml + pw - 126}" y1="{ly + 4 * 0}" y2="{ly}" '
                   f'stroke="{_e(c["color"])}" stroke-width="2"/><text x="{ml + pw - 120}" y="{ly + 4}" '
                   f'class="tick">{_e(c["name"])}</text>')
        ly += 15
    out.append("</svg>")
    return "".join(out)


def bar_chart(bars: list[tuple[str, float]], title: str, xlabel: str, ylabel: str, width: int = 640,
              height: int = 300, color: str = "#3b6ea5", value_fmt=_fmt_tick, marks: list[tuple[float, str]] = ()) -> str:
    """Vertical bars ``[(label, value)]``; ``marks``: dashed vertical separators ``(bar index, label)``."""
    ml, mr, mt, mb = 64, 16, 34, 58
    pw, ph = width - ml - mr, height - mt - mb
    n = max(len(bars), 1)
    ymax = max([v for _, v in bars] + [1e-12])
    y1 = ymax * 1.1

    def Y(y):
        return mt + ph - y / y1 * ph

    bw = min(pw / n, 72.0)       # a few bars stay bar-shaped
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{_e(title)}" class="chart">',
           f'<text x="{width / 2}" y="20" text-anchor="middle" class="ct">{_e(title)}</text>']
    for t in _nice_ticks(0, y1):
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="grid"/>'
                   f'<text x="{ml - 6}" y="{Y(t) + 4:.1f}" text-anchor="end" class="tick">{_e(value_fmt(t))}</text>')
    step = max(1, math.ceil(n / 24))
    for i, (label, v) in enumerate(bars):
        x = ml + i * bw
        h = v / y1 * ph
        out.append(f'<rect x="{x + bw * 0.1:.1f}" y="{mt + ph - h:.1f}" width="{bw * 0.8:.1f}" height="{h:.1f}" '
                   f'fill="{_e(color)}"><title>{_e(label)}: {_e(value_fmt(v))}</title></rect>')
        if i % step == 0:
            lab = label if len(label) <= 10 else label[:9] + "\u2026"
            out.append(f'<text transform="translate({x + bw / 2:.1f} {mt + ph + 10}) rotate(35)" '
                       f'class="tick">{_e(lab)}</text>')
    for idx, lab in marks:
        x = ml + idx * bw
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}" stroke="#c0392b" '
                   f'stroke-dasharray="4 3"/><text x="{x + 3:.1f}" y="{mt + 10}" class="tick">{_e(lab)}</text>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" class="axis"/>'
               f'<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}" class="axis"/>'
               f'<text x="{ml + pw / 2}" y="{height - 4}" text-anchor="middle" class="lab">{_e(xlabel)}</text>'
               f'<text transform="translate(14 {mt + ph / 2}) rotate(-90)" text-anchor="middle" class="lab">'
               f'{_e(ylabel)}</text></svg>')
    return "".join(out)


PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22"]


def category_chart(labels: list[str], lines: list[dict], title: str, width: int = 720, height: int = 300,
                   value_fmt=_fmt_tick) -> str:
    """Lines over categories (x = ``labels`` in order, evenly spaced), y from 0.

    ``lines``: [{"name", "values": [float | None per label], "flags": [bool per label]}]; a None
    value is not drawn (the line joins the values present); a flagged point is drawn larger with
    a black ring and "(regression)" in its tooltip. Colours cycle through :data:`PALETTE`;
    a chart with no value at all says "no data (not measured)". Every label escaped.
    """
    ml, mr, mt, mb = 72, 16, 30, 64
    pw, ph = width - ml - mr, height - mt - mb
    vals = [v for ln in lines for v in ln["values"] if v is not None]
    hi = max(vals) if vals and max(vals) > 0 else 1.0
    ticks = _nice_ticks(0.0, hi, 4)
    while ticks[-1] < hi:                       # the top tick at or above the highest value
        ticks.append(round(ticks[-1] + (ticks[1] - ticks[0]), 10))
    top = ticks[-1]
    n = max(1, len(labels))

    def X(i):
        return ml + pw * (i + 0.5) / n

    def Y(v):
        return mt + ph - v / top * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{_e(title)}" class="chart">',
           f'<text x="{width / 2}" y="18" text-anchor="middle" class="ct">{_e(title)}</text>']
    for t in ticks:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="grid"/>'
                   f'<text x="{ml - 6}" y="{Y(t) + 4:.1f}" text-anchor="end" class="tick">{_e(value_fmt(t))}</text>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" class="axis"/>'
               f'<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}" class="axis"/>')
    for i, lab in enumerate(labels):
        out.append(f'<text x="{X(i):.1f}" y="{mt + ph + 16}" text-anchor="middle" class="tick">{_e(lab[:24])}</text>')
    if not vals:
        out.append(f'<text x="{ml + pw / 2}" y="{mt + ph / 2}" text-anchor="middle" class="tick">'
                   f'no data (not measured)</text>')
    for j, ln in enumerate(lines):
        col = PALETTE[j % len(PALETTE)]
        pts = [(X(i), Y(v)) for i, v in enumerate(ln["values"]) if v is not None]
        if len(pts) > 1:
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{col}" stroke-width="2"/>')
        flags = ln.get("flags") or [False] * n
        for i, v in enumerate(ln["values"]):
            if v is None:
                continue
            ring = ' r="6" stroke="#000" stroke-width="2"' if flags[i] else ' r="3.5"'
            out.append(f'<circle cx="{X(i):.1f}" cy="{Y(v):.1f}"{ring} fill="{col}">'
                       f'<title>{_e(ln["name"])} {_e(labels[i])}: {_e(value_fmt(v))}'
                       f'{" (regression)" if flags[i] else ""}</title></circle>')
        ly = mt + ph + 32 + 14 * (j // 3)
        lx = ml + (j % 3) * (pw / 3)
        out.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="10" height="10" fill="{col}"/>'
                   f'<text x="{lx + 14:.1f}" y="{ly}" class="tick">{_e(ln["name"][:40])}</text>')
    out.append("</svg>")
    return "".join(out)
