"""Per-turn TTFA over the run as inline SVG, drawn on the server: the admin needs no JS or internet."""
from __future__ import annotations

from html import escape

W, H, L, R, T, B = 720, 300, 60, 20, 20, 40


def ttfa_svg(turns: list[dict], p95: float | None = None, target: float | None = None) -> str:
    points = [(t["at_s"], t["ttfa_ms"]) for t in turns if t.get("ttfa_ms") is not None and t.get("at_s") is not None]
    failed = [t["at_s"] for t in turns if t.get("ttfa_ms") is None and t.get("at_s") is not None]
    if not points and not failed:
        return '<p>No turns with audio to chart.</p>'
    xmax = max([p[0] for p in points] + failed + [1.0]) * 1.05
    ymax = max([p[1] for p in points] + [v for v in (p95, target) if v] + [100.0]) * 1.1
    x = lambda v: L + (W - L - R) * v / xmax  # noqa: E731
    y = lambda v: H - B - (H - T - B) * v / ymax  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'role="img" aria-label="TTFA per turn" style="background:#fff;font:11px sans-serif">',
           f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#333"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#333"/>']
    for i in range(6):
        v = ymax / 1.1 * i / 5
        out.append(f'<line x1="{L - 4}" y1="{y(v):.1f}" x2="{W - R}" y2="{y(v):.1f}" stroke="#eee"/>'
                   f'<text x="{L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
        s = xmax / 1.05 * i / 5
        out.append(f'<text x="{x(s):.1f}" y="{H - B + 15}" text-anchor="middle">{s:.0f}</text>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 5}" text-anchor="middle">turn start (s into the run)</text>')
    out.append(f'<text x="12" y="{(T + H - B) / 2}" transform="rotate(-90 12 {(T + H - B) / 2})" '
               f'text-anchor="middle">TTFA (ms)</text>')
    for label, value, colour in (("p95", p95, "#d80"), ("target", target, "#c00")):
        if value:
            out.append(f'<line x1="{L}" y1="{y(value):.1f}" x2="{W - R}" y2="{y(value):.1f}" stroke="{colour}" '
                       f'stroke-dasharray="5,3"/><text x="{W - R - 2}" y="{y(value) - 3:.1f}" text-anchor="end" '
                       f'fill="{colour}">{escape(label)} {value:.0f} ms</text>')
    for px, py in points:
        out.append(f'<circle cx="{x(px):.1f}" cy="{y(py):.1f}" r="2.5" fill="#2a6fb0" fill-opacity="0.7"/>')
    for px in failed:
        out.append(f'<text x="{x(px):.1f}" y="{H - B - 4}" text-anchor="middle" fill="#c00">×</text>')
    out.append("</svg>")
    return "".join(out)
