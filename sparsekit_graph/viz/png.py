"""A scene as PNG through matplotlib (pip-only; no cairo or graphviz)."""

from __future__ import annotations

from pathlib import Path

from ..errors import SparseKitError
from .layout import LINE_H
from .scene import Scene

__all__ = ["write_png"]

_DPI = 100


def write_png(scene: Scene, path: Path) -> None:
    """Draw ``scene`` at one pixel per layout unit."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.patches import FancyBboxPatch, PathPatch, Rectangle
        from matplotlib.path import Path as MplPath
    except ImportError as e:
        raise SparseKitError("PNG pictures need matplotlib: pip install 'sparsekit-graph[viz]' (or write .svg)") from e
    w, h = scene.width, scene.height
    if max(w, h) >= 2**16:
        raise SparseKitError(f"the picture is {w:.0f}x{h:.0f} px, too large for PNG: write .svg or .html")
    fig = plt.figure(figsize=(w / _DPI, h / _DPI), dpi=_DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    font = {"family": "monospace", "fontsize": 11 * 72 / _DPI}
    for pts in scene.edges:
        verts, codes = [pts[0]], [MplPath.MOVETO]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            dy = (y1 - y0) / 2
            verts += [(x0, y0 + dy), (x1, y1 - dy), (x1, y1)]
            codes += [MplPath.CURVE4] * 3
        ax.add_patch(PathPatch(MplPath(verts, codes), fill=False, edgecolor="#777", linewidth=0.9))
    for it in scene.items:
        b = it.box
        ax.add_patch(
            FancyBboxPatch(
                (b.x, b.y), b.w, b.h, boxstyle="round,pad=0,rounding_size=4", facecolor=it.fill,
                edgecolor="#b00" if it.pinned else "#333", linestyle="--" if it.pinned else "-", linewidth=1.2,
            )
        )  # fmt: skip
        if it.stripe:
            ax.add_patch(Rectangle((b.x + 1, b.y + 1), 5, b.h - 2, facecolor=it.stripe, edgecolor="none"))
        for i, line in enumerate(it.lines):
            ax.text(b.cx, b.y + 5 + LINE_H * i + LINE_H / 2, line, ha="center", va="center", **font)
    for row in scene.legend:
        b = row.box
        ax.add_patch(
            Rectangle((b.x, b.y + 1), 12, 12, facecolor=row.colour, edgecolor="#b00" if row.pinned else "#333",
                      linestyle="--" if row.pinned else "-")
        )  # fmt: skip
        ax.text(b.x + 18, b.y + LINE_H / 2 + 1, row.text, ha="left", va="center", **font)
    fig.savefig(path, dpi=_DPI, facecolor="white")
    plt.close(fig)
