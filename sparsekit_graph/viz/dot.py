"""A layer graph as graphviz DOT text (same nodes, colours and legend as the SVG)."""

from __future__ import annotations

from .layers import LayerGraph
from .scene import Scene

__all__ = ["scene_dot"]


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def scene_dot(lg: LayerGraph, scene: Scene) -> str:
    """DOT text: one box per layer filled with its output group's colour, a legend cluster."""
    ids = {it.key: f"n{i}" for i, it in enumerate(scene.items)}
    lines = ["digraph model {", '  node [shape=box, style="rounded,filled", fontname=monospace, fontsize=10];']
    for it in scene.items:
        style = '"rounded,filled,dashed", color="#bb0000"' if it.pinned else '"rounded,filled"'
        lines.append(f"  {ids[it.key]} [label={_q(chr(10).join(it.lines))}, fillcolor={_q(it.fill)}, style={style}];")
    for s, t in lg.edges:
        lines.append(f"  {ids[s]} -> {ids[t]};")
    lines.append('  subgraph cluster_legend { label="groups"; node [shape=box, style=filled];')
    for row in scene.legend:
        lines.append(f"    g{row.group} [label={_q(row.text)}, fillcolor={_q(row.colour)}];")
    lines += ["  }", "}"]
    return "\n".join(lines)
