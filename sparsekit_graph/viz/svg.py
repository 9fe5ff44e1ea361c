"""A scene as SVG text, written directly (no system tools)."""

from __future__ import annotations

from html import escape

from .layout import LINE_H
from .scene import Scene

__all__ = ["scene_svg"]

_STYLE = (
    "text{font-family:DejaVu Sans Mono,Menlo,Consolas,monospace;font-size:11px;fill:#111}"
    ".edge{fill:none;stroke:#777;stroke-width:1.2}"
    ".node rect.body{stroke:#333;stroke-width:1}"
    ".node.pinned rect.body{stroke:#b00;stroke-dasharray:4 2;stroke-width:1.6}"
    ".node.hl rect.body{stroke:#000;stroke-width:3.5}"
    ".dim{opacity:.25}"
)


def scene_svg(scene: Scene, *, element_id: str = "graph") -> str:
    """Standalone SVG; each layer is ``<g class="node" data-groups="i j">`` (group indices)."""
    w, h = scene.width, scene.height
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{element_id}" width="{w:.0f}" height="{h:.0f}" '
        f'viewBox="0 0 {w:.0f} {h:.0f}">',
        f"<style>{_STYLE}</style>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#777"/></marker></defs>',
        f'<rect x="0" y="0" width="{w:.0f}" height="{h:.0f}" fill="#fff"/>',
    ]
    for pts in scene.edges:
        out.append(f'<path class="edge" d="{_curve(pts)}" marker-end="url(#arrow)"/>')
    for it in scene.items:
        b = it.box
        cls = "node pinned" if it.pinned else "node"
        groups = " ".join(str(g) for g in it.groups)
        out.append(f'<g class="{cls}" data-key="{escape(it.key)}" data-groups="{groups}"><title>{escape(it.title)}</title>')
        rect = f'x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" height="{b.h:.1f}"'
        out.append(f'<rect class="body" {rect} rx="4" fill="{it.fill}"/>')
        if it.stripe:
            out.append(f'<rect x="{b.x + 1:.1f}" y="{b.y + 1:.1f}" width="5" height="{b.h - 2:.1f}" fill="{it.stripe}"/>')
        for i, line in enumerate(it.lines):
            y = b.y + 5 + LINE_H * (i + 1) - 3
            out.append(f'<text x="{b.cx:.1f}" y="{y:.1f}" text-anchor="middle">{escape(line)}</text>')
        out.append("</g>")
    for row in scene.legend:
        b = row.box
        cls = "legend pinned" if row.pinned else "legend"
        dash = ' stroke="#b00" stroke-dasharray="3 2"' if row.pinned else ' stroke="#333"'
        out.append(f'<g class="{cls}" data-groups="{row.group}">')
        out.append(f'<rect x="{b.x:.1f}" y="{b.y + 1:.1f}" width="12" height="12" fill="{row.colour}"{dash}/>')
        out.append(f'<text x="{b.x + 18:.1f}" y="{b.y + LINE_H - 3:.1f}">{escape(row.text)}</text></g>')
    out.append("</svg>")
    return "\n".join(out)


def _curve(pts: list[tuple[float, float]]) -> str:
    """A smooth path through ``pts``: vertical tangents at every point."""
    (x, y), d = pts[0], [f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"]
    for nx_, ny in pts[1:]:
        dy = (ny - y) / 2
        d.append(f"C{x:.1f},{y + dy:.1f} {nx_:.1f},{ny - dy:.1f} {nx_:.1f},{ny:.1f}")
        x, y = nx_, ny
    return " ".join(d)
